"""Why are the demo VLM's yes/no presence answers at chance? A cheap diagnosis (one forward per probe).

For the first N held-out scenes, the evaluation's own presence question (the same questions
`python -m explorer.vlm.evaluate` asks, same rng) is put to the shipped tiny-vlm, and at the
answer position we read P("yes") and P("no") (the first answer token, as greedy decoding sees it).
Reported: how often it answers yes, accuracy of the greedy yes/no, accuracy with the best
threshold on log P(yes) - log P(no) (is it a bias or no signal?), the ROC AUC of that margin
against the truth, and the same margin with the image replaced by a plain grey picture (does
the image move the answer at all?). Also checks that the evaluation's prompt is token for token
the training prompt and that the training labels are exactly the answer tokens.

    python bench/vlm_presence_probe.py [--scenes 120]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer.backends.vlm import load_vlm  # noqa: E402
from explorer.vlm.evaluate import presence_kind  # noqa: E402
from explorer.vlm.scenes import heldout_seeds, make_scene  # noqa: E402
from explorer.vlm.train import PromptCodec, _batch  # noqa: E402


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties count half."""
    pos, neg = scores[truth], scores[~truth]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


@torch.inference_mode()
def margin(vlm: object, question: str, image: Image.Image, yes: int, no: int) -> tuple[float, int]:
    """log P(yes) - log P(no) at the answer position, and the greedy first token."""
    inputs = vlm.prepare(question, image)  # type: ignore[attr-defined]
    logits = vlm.forward(inputs).logits[0, -1].float()  # type: ignore[attr-defined]
    logp = torch.log_softmax(logits, -1)
    return float(logp[yes] - logp[no]), int(logits.argmax())


def main() -> dict[str, object]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=120)
    args = ap.parse_args()
    vlm = load_vlm("tiny-vlm")
    tok = vlm.tokenizer
    yes, no = (tok(w, add_special_tokens=False).input_ids for w in ("yes", "no"))
    assert len(yes) == 1 and len(no) == 1, (yes, no)
    yes_id, no_id = yes[0], no[0]
    grey = Image.new("RGB", (224, 224), (128, 128, 128))

    # the evaluation's prompt is the training prompt, token for token; labels are the answer only
    codec = PromptCodec(tok)
    scene = make_scene(heldout_seeds(1)[0])
    qa = next(q for q in scene.questions(random.Random(0)) if q.kind == "presence")
    inputs = vlm.prepare(qa.question, scene.image)
    before, after = codec.split(qa.question)
    img = inputs.image_positions
    same_prompt = (
        inputs.input_ids[: img[0]].tolist() == before and inputs.input_ids[img[-1] + 1 :].tolist() == after
    )
    embed = vlm.lm.embed_module()
    visual = torch.zeros(1, len(img), int(vlm.lm.d_model))
    _, _, labels = _batch(codec, embed, visual, [qa])
    labelled = tok.decode(labels[0][labels[0] >= 0])

    rng = random.Random(0)  # the evaluation's rng and question order
    rows = []
    for s in heldout_seeds(args.scenes):
        scene = make_scene(s)
        qa = {q.kind: q for q in scene.questions(rng)}["presence"]
        m, top = margin(vlm, qa.question, scene.image, yes_id, no_id)
        m_grey, _ = margin(vlm, qa.question, grey, yes_id, no_id)
        rows.append((qa.answer == "yes", m, top, m_grey, presence_kind(qa, scene)))
    truth = np.array([r[0] for r in rows])
    margins = np.array([r[1] for r in rows])
    greys = np.array([r[3] for r in rows])
    tops = [r[2] for r in rows]
    said_yes = margins > 0
    thresholds = np.unique(margins)
    best = max(float(((margins >= t) == truth).mean()) for t in thresholds)
    by_kind = {}
    for kind in ("present", "absent colour", "absent shape"):
        sel = np.array([r[4] == kind for r in rows])
        by_kind[kind] = {
            "n": int(sel.sum()),
            "said_yes": round(float(said_yes[sel].mean()), 3),
            "accuracy": round(float((said_yes[sel] == truth[sel]).mean()), 3),
            "mean_margin": round(float(margins[sel].mean()), 3),
        }
    return {
        "scenes": args.scenes,
        "eval_prompt_equals_training_prompt": same_prompt,
        "training_labels_decode_to": labelled,
        "first_token_is_yes_or_no": round(float(np.mean([t in (yes_id, no_id) for t in tops])), 3),
        "truth_yes_share": round(float(truth.mean()), 3),
        "said_yes_share": round(float(said_yes.mean()), 3),
        "accuracy_greedy": round(float((said_yes == truth).mean()), 3),
        "accuracy_best_threshold": round(best, 3),
        "auc_margin_vs_truth": round(auc(margins, truth), 3),
        "auc_grey_image_margin_vs_truth": round(auc(greys, truth), 3),
        "corr_margin_image_vs_grey": round(float(np.corrcoef(margins, greys)[0, 1]), 3),
        "by_kind": by_kind,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
