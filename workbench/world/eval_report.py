"""eval-world's report: the JSON, the markdown tables, the PSNR plot and the frame strip."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from workbench.files import write_atomic
from workbench.world import accuracy
from workbench.world.plot import plot_curves

REPORT_STEPS = (1, 2, 4, 8, 16)


def markdown(report: dict) -> str:
    steps = [k for k in REPORT_STEPS if k <= report["steps"]]
    head = "| rollout | method | " + " | ".join(f"PSNR@{k}" for k in steps)
    head += " | " + " | ".join(f"SSIM@{k}" for k in steps) + " |\n"
    head += "|---|---|" + "---|" * (2 * len(steps)) + "\n"
    rows = []
    groups = [("navigation " + k, v) for k, v in report["navigation"].items()]
    groups.append(("future frames", report["future"]))
    for group, methods in groups:
        for method, s in methods.items():
            if "psnr" not in s:  # a navigation kind's path accuracy
                continue
            cells = [f"{s['psnr'][k - 1]:.2f}" for k in steps]
            cells += [f"{s['ssim'][k - 1]:.3f}" for k in steps]
            rows.append(f"| {group} | {method} | " + " | ".join(cells) + " |")
    r = report["revisit"]
    revisit = (
        f"\nRevisit ({', '.join(r['actions'])}): return frame vs first frame, PSNR "
        f"{r['full_context_psnr']:.2f} dB with the whole path in context, "
        f"{r['last_frame_only_psnr']:.2f} dB with only the last frame; the true frame "
        f"before the return scores {r['copy_previous_truth_psnr']:.2f} dB.\n"
    )
    future = report["future"]

    def first_step(key: str) -> str:
        return ", ".join(f"{m} {s[key][0]:.2f}" for m, s in future.items() if s[key][0] is not None)

    runs = next(iter(future.values()))["moved_runs"][0]
    if runs:
        moving, moved = first_step("moving_psnr"), first_step("psnr_moved_frames")
        revisit = (
            "\nFuture frames, PSNR over the pixels that moved (true frame vs last context "
            f"frame), step 1: {moving} dB. The whole frame at step 1 in the {runs} of "
            f"{report['episodes']} episodes where something moved: {moved} dB.\n" + revisit
        )
    ae = report["autoencoder"]
    recon = f"\nAutoencoder reconstruction of {ae['frames']} held-out views: {ae['psnr_mean']:.2f} dB.\n"
    return head + "\n".join(rows) + "\n" + revisit + recon + accuracy.markdown(report)


def strip_image(strips: dict[str, list[list[Image.Image]]]) -> Image.Image:
    """Per kind two rows, the true frames above the model's, start frame first."""
    rows = [row for pair in strips.values() for row in pair]
    w, h = rows[0][0].size
    sheet = Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)), "white")
    for i, row in enumerate(rows):
        for j, frame in enumerate(row):
            sheet.paste(frame, (j * w, i * h))
    return sheet


def write_report(
    report: dict, out: Path, strips: dict[str, list[list[Image.Image]]] | None = None
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    curves = {f"nav {k}": v["model"]["psnr"] for k, v in report["navigation"].items()}
    curves["nav copy (random walk)"] = report["navigation"]["random-walk"]["copy"]["psnr"]
    curves.update({f"future {k}": v["psnr"] for k, v in report["future"].items()})
    text = json.dumps(report, indent=2) + "\n"
    table = markdown(report)
    return [
        write_atomic(out / "world-eval.json", lambda tmp: tmp.write_text(text)),
        write_atomic(out / "world-eval.md", lambda tmp: tmp.write_text(table)),
        write_atomic(out / "world-eval.png", lambda tmp: plot_curves(curves, tmp)),
    ] + (
        [write_atomic(out / "world-eval-strip.png", lambda tmp: strip_image(strips).save(tmp))]
        if strips
        else []
    )
