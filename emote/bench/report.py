"""Benchmark reports: a Markdown table and a PNG plot from the JSON record."""

from __future__ import annotations

from pathlib import Path


def _f(x, fmt="{:.2f}") -> str:
    return "n/a" if x is None else ("inf" if x == float("inf") else fmt.format(x))


def markdown(record: dict) -> str:
    m, cfg = record["machine"], record["config"]
    lines = [
        f"Bundle `{record['bundle']['preset']}` ({record['bundle']['hash']}), {cfg['audio_seconds']:.2f} s of audio, "
        f"{record['threads']} threads on {m['cpu']} ({m['cores']} cores); {cfg['warmup']} warm-up + {cfg['repeat']} interleaved runs per variant; "
        f"measured GEMM peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in record["peak_gflops"].items()) + ".",
        "",
        "| variant | what | p50 s | p90 s | frames/s | RTF | first frame s | speedup | PSNR vs baseline dB | lip sync r | identity | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in record["results"].items():
        sync = r.get("lipsync") or {}  # scored for trained weights only
        loop = r.get("denoise_loop")  # the TensorRT variants: whether the loop ran as one CUDA graph
        what = r["description"] + (f"; loop: {loop}" if loop not in (None, "host loop") else "")
        lines.append(
            f"| {name} | {what} | {_f(r['seconds']['p50'])} | {_f(r['seconds']['p90'])} | {_f(r['fps'], '{:.1f}')} | "
            f"{_f(r['real_time_factor'])} | {_f(r['first_frame']['p50'])} | {_f(r['speedup_vs_baseline'], '{:.1f}x')} | "
            f"{_f(r['psnr_vs_baseline_db'], '{:.1f}')} | {_f(sync.get('correlation'))} | {_f(sync.get('identity'))} | "
            f"{_f(r['peak_rss_mb'], '{:.0f}')} |"
        )
    lines += [
        "",
        "Per component (runtime variants; milliseconds per call, p50 / p90 / p99; FLOP/s on the counted ops):",
        "",
        "| variant | stage | calls | p50 ms | p90 ms | p99 ms | GFLOP | GFLOP/s | of peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in record["results"].items():
        for stage, s in r["stages"].items():
            lines.append(
                f"| {name} | {stage} | {s['n']} | {s['p50'] * 1e3:.1f} | {s['p90'] * 1e3:.1f} | {s['p99'] * 1e3:.1f} | "
                f"{_f(s.get('gflop'))} | {_f(s.get('gflops_per_s'), '{:.0f}')} | {_f(s.get('fraction_of_peak'), '{:.0%}')} |"
            )
    lines += ["", f"FLOPs: {record['flops']['counted']}."]
    ff = record.get("first_frame_process")
    if ff:
        lines += [
            "",
            "First frame in a fresh process (`--first-frame`; medians of interleaved pairs; cold: an empty compiled-model cache, "
            "warm: the cache a cold process filled; open: the pipeline made, graphs compiled or read from the cache; "
            "first frame: from the stream's start, as `emote generate` counts it; process: from the spawn, imports included):",
            "",
            "| variant | cold open s | cold first frame s | cold process s | warm open s | warm first frame s | warm process s | pairs |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, r in ff.items():
            c, w = r["cold"], r["warm"]
            lines.append(
                f"| {name} | {c['open_s']:.2f} | {c['first_frame_s']:.2f} | {c['process_s']:.2f} | "
                f"{w['open_s']:.2f} | {w['first_frame_s']:.2f} | {w['process_s']:.2f} | {c['n']} |"
            )
    return "\n".join(lines) + "\n"


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(record["results"])
    res = record["results"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    p50 = [res[n]["seconds"]["p50"] for n in names]
    p90 = [res[n]["seconds"]["p90"] for n in names]
    a.barh(names, p50, color="#4a7ab5", label="p50")
    a.errorbar(p90, names, fmt="|", color="black", label="p90")
    a.set_xlabel("seconds per video (lower is better)")
    a.set_xscale("log")
    a.invert_yaxis()
    a.legend(loc="lower right")
    a.set_title("End-to-end latency")
    finite = [res[n]["psnr_vs_baseline_db"] for n in names if res[n]["psnr_vs_baseline_db"] not in (None, float("inf"))]
    top = max(finite, default=50.0) + 10.0  # identical frames (PSNR = inf) are drawn above every finite value
    for n in names:
        psnr = res[n]["psnr_vs_baseline_db"]
        y = top if psnr is None or psnr == float("inf") else psnr
        b.scatter(res[n]["speedup_vs_baseline"], y, s=40)
        b.annotate(n, (res[n]["speedup_vs_baseline"], y), fontsize=7, xytext=(4, 2), textcoords="offset points")
    b.set_xscale("log")
    b.set_xlabel("speedup over the PyTorch baseline")
    b.set_ylabel("frame PSNR vs baseline, dB (identical: top)")
    b.set_title("Fidelity against speed")
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(record: dict, out: Path) -> dict[str, Path]:
    from .run import write_json

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "results.png"}
    write_json(record, paths["json"])
    paths["markdown"].write_text(markdown(record))
    plot(record, paths["plot"])
    return paths
