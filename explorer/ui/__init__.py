"""Gradio UI: a thin layer over `explorer.api`. Import `explorer.ui.app.build_demo` to build it."""
