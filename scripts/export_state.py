#!/usr/bin/env python
"""Export the weights a run's `state.pt` holds (EMA, collapsed under --reparam) as a safetensors file.

    python scripts/export_state.py runs/a2-twin/state.pt runs/a2-twin/step16000.safetensors

For evaluating committed run states (research/runs/*/state.pt) whose run folders are gone; the
provenance names the state's commands and step. Bundled weights come from the trainer's own
final/best files, which carry the full provenance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srkd_cli.archs import build_model, reparam  # noqa: E402
from srkd_cli.checkpoint import save_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("state", type=Path)
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    st = torch.load(a.state, map_location="cpu", weights_only=True)
    model = build_model(st["arch"], st["scale"], **st["model_config"])
    width = int(st.get("reparam", 0))
    if width:
        reparam.expand(model, width)
    model.load_state_dict(st["ema"] if st["ema"] is not None else st["model"])
    if width:
        model = reparam.collapse(model)
    prov = {"commands": st.get("commands", []), "steps": st["step"], "recipe": st.get("recipe"),
            "reparam": width or None, "exported_from": str(a.state), "weights": "ema" if st["ema"] is not None else "raw"}
    save_checkpoint(a.out, model, st["arch"], st["model_config"], prov)
    print(f"{a.out}: {st['arch']} x{st['scale']}, step {st['step']}")


if __name__ == "__main__":
    main()
