"""AASIST as an external baseline for the speech_realism judge, on the same test pairs.

    python bench/aasist_baseline.py --shards SHARDS/speech_realism [--split test] [--report REPORT_DIR]
                                    [--weights ../shared/pretrained/aasist/AASIST.pth] [--out FILE.json]

AASIST (Jung et al., ICASSP 2022: a sinc filterbank front-end, a residual encoder, then spectral and
temporal graph attention joined by heterogeneous graph attention with a master node) was trained on
ASVspoof 2019 LA to tell bona fide speech from synthetic / converted speech. Its weights are not part
of the project: they are read from WEIGHTS (a plain PyTorch state dict, MIT, published with the
upstream code; see ../shared/pretrained/README.md for where it comes from) with
torch.load(weights_only=True); without the file the baseline says so in one line and exits 0.
The hyper-parameters (AASIST.conf's model_config, or AASIST-L.conf's for the light model) sit beside
the weights; the network below is written from the paper's description and the state dict's names.

Both sides of every pair of SPLIT are scored with the bona fide log-odds (logit bona fide - logit
spoof) of their 16 kHz audio, the 64,600-sample input filled by repeating a shorter clip (as the
upstream evaluation pads); pairwise accuracy (chosen > rejected, ties 1/2) overall, per operator,
per variant (TTS engine / vocoder) and per severity. With --report (`python -m eval evaluate`'s folder
for the same shards) the judge's accuracy on the same pairs is printed beside it.

A baseline, never a dependency: nothing in perturb/, train/ or eval/ imports it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.dnsmos_baseline import _group_acc, judge_scores, read_pairs, score_pairs  # noqa: E402
from eval.metrics import pairwise_accuracy  # noqa: E402

SR = 16000
N_SAMPLES = 64600
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "pretrained" / "aasist" / "AASIST.pth"
# model_config of the two published checkpoints (AASIST.conf / AASIST-L.conf)
CONFIGS = {
    "AASIST": {"first_conv": 128, "filts": [70, [1, 32], [32, 32], [32, 64], [64, 64]], "gat_dims": [64, 32],
               "pool_ratios": [0.5, 0.7, 0.5, 0.5], "temperatures": [2.0, 2.0, 100.0, 100.0]},
    "AASIST-L": {"first_conv": 128, "filts": [70, [1, 32], [32, 32], [32, 24], [24, 24]], "gat_dims": [24, 32],
                 "pool_ratios": [0.4, 0.5, 0.7, 0.5], "temperatures": [2.0, 2.0, 100.0, 100.0]},
}


# ------------------------------------------------------------------------------------ network
def sinc_filterbank(n_filters: int, kernel: int, sr: int = SR) -> torch.Tensor:
    """Fixed band-pass sinc filters (n_filters, kernel | 1) with mel-spaced edges over 0..sr/2, each
    Hamming-windowed (the front-end is not trained, so it is not in the state dict)."""
    kernel += 1 - kernel % 2  # odd: symmetric filters
    mel = lambda hz: 2595 * np.log10(1 + hz / 700)
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)
    f = (sr // 2) * np.linspace(0, 1, 257)
    edges = hz(np.linspace(mel(f).min(), mel(f).max(), n_filters + 1))
    t = np.arange(-(kernel - 1) / 2, (kernel - 1) / 2 + 1)
    lowpass = lambda fc: (2 * fc / sr) * np.sinc(2 * fc * t / sr)
    bank = np.stack([np.hamming(kernel) * (lowpass(hi) - lowpass(lo)) for lo, hi in zip(edges[:-1], edges[1:])])
    return torch.tensor(bank, dtype=torch.float32).unsqueeze(1)


class ResBlock(nn.Module):
    """conv(2x3) -> BN -> SELU -> conv(2x3), plus the input (1x3-projected when the width changes), then
    max-pool over 3 time steps. bn1 is in the published state dict but, as trained, the first conv reads
    the block's input directly, so bn1 is kept and not applied."""

    def __init__(self, c_in: int, c_out: int, first: bool = False):
        super().__init__()
        if not first:
            self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, (2, 3), padding=(1, 1))
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, (2, 3), padding=(0, 1))
        if c_in != c_out:
            self.conv_downsample = nn.Conv2d(c_in, c_out, (1, 3), padding=(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.selu(self.bn2(self.conv1(x))))
        skip = self.conv_downsample(x) if hasattr(self, "conv_downsample") else x
        return F.max_pool2d(out + skip, (1, 3))


def _bn_nodes(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    return bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class GAT(nn.Module):
    """Graph attention over the nodes of one graph: attention from the tanh-projected products of node
    pairs, softmax with a temperature; out = W_att (A x) + W x, batch-normed, SELU."""

    def __init__(self, d_in: int, d_out: int, temperature: float):
        super().__init__()
        self.att_proj = nn.Linear(d_in, d_out)
        self.att_weight = nn.Parameter(torch.zeros(d_out, 1))
        self.proj_with_att = nn.Linear(d_in, d_out)
        self.proj_without_att = nn.Linear(d_in, d_out)
        self.bn = nn.BatchNorm1d(d_out)
        self.temp = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = torch.tanh(self.att_proj(x.unsqueeze(2) * x.unsqueeze(1)))           # (B, N, N, d)
        att = F.softmax((pairs @ self.att_weight).squeeze(-1) / self.temp, dim=-1)  # (B, N, N)
        return F.selu(_bn_nodes(self.bn, self.proj_with_att(att @ x) + self.proj_without_att(x)))


class HeteroGAT(nn.Module):
    """Attention over the union of two graphs (type-specific projections; separate attention vectors for
    within type 1, within type 2 and across) plus a master node that attends to every node."""

    def __init__(self, d_in: int, d_out: int, temperature: float):
        super().__init__()
        self.proj_type1, self.proj_type2 = nn.Linear(d_in, d_in), nn.Linear(d_in, d_in)
        self.att_proj, self.att_projM = nn.Linear(d_in, d_out), nn.Linear(d_in, d_out)
        for name in ("att_weight11", "att_weight22", "att_weight12", "att_weightM"):
            setattr(self, name, nn.Parameter(torch.zeros(d_out, 1)))
        self.proj_with_att, self.proj_without_att = nn.Linear(d_in, d_out), nn.Linear(d_in, d_out)
        self.proj_with_attM, self.proj_without_attM = nn.Linear(d_in, d_out), nn.Linear(d_in, d_out)
        self.bn = nn.BatchNorm1d(d_out)
        self.temp = temperature

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, master: torch.Tensor):
        n1 = x1.shape[1]
        x = torch.cat([self.proj_type1(x1), self.proj_type2(x2)], dim=1)
        # master node: attention over the nodes from their products with it
        m_att = F.softmax((torch.tanh(self.att_projM(x * master)) @ self.att_weightM) / self.temp, dim=1)
        master = self.proj_with_attM(m_att.transpose(1, 2) @ x) + self.proj_without_attM(master)
        pairs = torch.tanh(self.att_proj(x.unsqueeze(2) * x.unsqueeze(1)))
        same1, same2 = torch.zeros(x.shape[1], dtype=torch.bool), torch.zeros(x.shape[1], dtype=torch.bool)
        same1[:n1], same2[n1:] = True, True
        w = torch.where((same1[:, None] & same1[None, :])[..., None], self.att_weight11.T,
                        torch.where((same2[:, None] & same2[None, :])[..., None], self.att_weight22.T,
                                    self.att_weight12.T))                               # (N, N, d)
        att = F.softmax((pairs * w).sum(-1) / self.temp, dim=-1)
        x = F.selu(_bn_nodes(self.bn, self.proj_with_att(att @ x) + self.proj_without_att(x)))
        return x[:, :n1], x[:, n1:], master


class GraphPool(nn.Module):
    """Keep the top `ratio` of nodes by a learned sigmoid score, each scaled by its score."""

    def __init__(self, ratio: float, d: int):
        super().__init__()
        self.proj, self.ratio = nn.Linear(d, 1), ratio

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        scores = torch.sigmoid(self.proj(h))
        k = max(int(h.shape[1] * self.ratio), 1)
        idx = torch.topk(scores, k, dim=1).indices.expand(-1, -1, h.shape[2])
        return torch.gather(h * scores, 1, idx)


class AASIST(nn.Module):
    """Raw 16 kHz waveform (B, 64600) -> logits (B, 2): [spoof, bona fide]."""

    def __init__(self, first_conv: int, filts: list, gat_dims: list, pool_ratios: list, temperatures: list):
        super().__init__()
        self.register_buffer("sinc", sinc_filterbank(filts[0], first_conv), persistent=False)
        self.first_bn = nn.BatchNorm2d(1)
        widths = [filts[1], filts[2], filts[3], filts[4], filts[4], filts[4]]
        self.encoder = nn.Sequential(*[nn.Sequential(ResBlock(a, b, first=i == 0)) for i, (a, b) in enumerate(widths)])
        d_enc, (g0, g1) = filts[-1][-1], gat_dims
        self.pos_S = nn.Parameter(torch.zeros(1, 23, d_enc))
        self.master1, self.master2 = nn.Parameter(torch.zeros(1, 1, g0)), nn.Parameter(torch.zeros(1, 1, g0))
        self.GAT_layer_S, self.GAT_layer_T = GAT(d_enc, g0, temperatures[0]), GAT(d_enc, g0, temperatures[1])
        self.HtrgGAT_layer_ST11 = HeteroGAT(g0, g1, temperatures[2])
        self.HtrgGAT_layer_ST12 = HeteroGAT(g1, g1, temperatures[2])
        self.HtrgGAT_layer_ST21 = HeteroGAT(g0, g1, temperatures[2])
        self.HtrgGAT_layer_ST22 = HeteroGAT(g1, g1, temperatures[2])
        self.pool_S, self.pool_T = GraphPool(pool_ratios[0], g0), GraphPool(pool_ratios[1], g0)
        for name in ("pool_hS1", "pool_hT1", "pool_hS2", "pool_hT2"):
            setattr(self, name, GraphPool(pool_ratios[2], g1))
        self.out_layer = nn.Linear(5 * g1, 2)

    def _branch(self, t, s, master, first: HeteroGAT, second: HeteroGAT, pool_s: GraphPool, pool_t: GraphPool):
        t1, s1, m1 = first(t, s, master)
        s1, t1 = pool_s(s1), pool_t(t1)
        t_aug, s_aug, m_aug = second(t1, s1, m1)
        return t1 + t_aug, s1 + s_aug, m1 + m_aug

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = F.conv1d(wav.unsqueeze(1), self.sinc).unsqueeze(1)          # (B, 1, filters, time)
        x = F.selu(self.first_bn(F.max_pool2d(x.abs(), (3, 3))))
        e = self.encoder(x)                                             # (B, C, freq, time)
        s = self.pool_S(self.GAT_layer_S(e.abs().amax(dim=3).transpose(1, 2) + self.pos_S))
        t = self.pool_T(self.GAT_layer_T(e.abs().amax(dim=2).transpose(1, 2)))
        t1, s1, m1 = self._branch(t, s, self.master1, self.HtrgGAT_layer_ST11, self.HtrgGAT_layer_ST12,
                                  self.pool_hS1, self.pool_hT1)
        t2, s2, m2 = self._branch(t, s, self.master2, self.HtrgGAT_layer_ST21, self.HtrgGAT_layer_ST22,
                                  self.pool_hS2, self.pool_hT2)
        t, s, m = torch.maximum(t1, t2), torch.maximum(s1, s2), torch.maximum(m1, m2)
        hidden = torch.cat([t.abs().amax(1), t.mean(1), s.abs().amax(1), s.mean(1), m.squeeze(1)], dim=1)
        return self.out_layer(hidden)


def load_aasist(weights: Path) -> AASIST:
    """The network for a published state dict (AASIST or AASIST-L, told apart by the encoder's width),
    in eval mode; a state dict of another layout is refused by load_state_dict(strict=True)."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "out_layer.weight" not in state:
        raise SystemExit(f"AASIST baseline: {weights} is not an AASIST state dict")
    name = "AASIST" if state["pos_S"].shape[-1] == 64 else "AASIST-L"
    model = AASIST(**CONFIGS[name])
    model.load_state_dict(state, strict=True)
    return model.eval()


def fit_input(audio: np.ndarray) -> np.ndarray:
    """The fixed 64,600-sample input: a shorter clip repeated, a longer one cut."""
    x = np.asarray(audio, dtype=np.float32)
    return np.resize(x, N_SAMPLES) if len(x) else np.zeros(N_SAMPLES, np.float32)


class Scorer:
    """Bona fide log-odds of 16 kHz audio."""

    def __init__(self, weights: Path) -> None:
        self.model = load_aasist(weights)

    @torch.no_grad()
    def __call__(self, audio: np.ndarray) -> float:
        logits = self.model(torch.from_numpy(fit_input(audio))[None])[0]
        return float(logits[1] - logits[0])


# -------------------------------------------------------------------------------------- pairs
def _variant(meta: dict[str, Any]) -> str:
    """The TTS engine or vocoder that made a pair's rejected side ("-" when none is recorded)."""
    for op in meta.get("ops") or []:
        params = op.get("params") or {}
        for key in ("engine", "vocoder"):
            if isinstance(params.get(key), str):
                return params[key]
    return "-"


def run(shards: Path, weights: Path, split: str = "test", report: Path | None = None) -> dict[str, Any]:
    torch.set_num_threads(1)
    model = Scorer(weights)
    pairs = read_pairs(shards, split)
    variant = {p["key"]: _variant(p["json"]) for p in pairs}
    rows, _ = score_pairs(pairs, model, "aasist", judge_scores(report, split) if report else {})
    for r in rows:
        r["variant"] = variant[r["key"]]
    acc = lambda rs, a: pairwise_accuracy([r[f"{a}_chosen"] for r in rs], [r[f"{a}_rejected"] for r in rs])
    result: dict[str, Any] = {
        "split": split, "weights": weights.name, "pairs": len(rows),
        "aasist_pairwise_accuracy": acc(rows, "aasist"),
        "aasist_per_operator": _group_acc(rows, "operator", "aasist_chosen", "aasist_rejected"),
        "aasist_per_variant": _group_acc(rows, "variant", "aasist_chosen", "aasist_rejected"),
        "aasist_per_severity": _group_acc(rows, "severity", "aasist_chosen", "aasist_rejected"),
        "mean_log_odds": {s: float(np.mean([r[f"aasist_{s}"] for r in rows])) for s in ("chosen", "rejected")},
    }
    judged = [r for r in rows if "judge_chosen" in r]
    if judged:
        result["judge_pairs"] = len(judged)
        result["judge_pairwise_accuracy"] = acc(judged, "judge")
        result["judge_per_variant"] = _group_acc(judged, "variant", "judge_chosen", "judge_rejected")
    return result


def format_result(r: dict[str, Any]) -> str:
    lines = [f"AASIST ({r['weights']}) on {r['split']}: {r['pairs']} pairs; mean bona fide log-odds chosen "
             f"{r['mean_log_odds']['chosen']:.2f}, rejected {r['mean_log_odds']['rejected']:.2f}",
             f"AASIST pairwise accuracy: {r['aasist_pairwise_accuracy']:.3f}"]
    if "judge_pairwise_accuracy" in r:
        lines.append(f"judge pairwise accuracy (same pairs): {r['judge_pairwise_accuracy']:.3f}")
    lines += ["", "| variant | pairs | AASIST | judge |", "|---|---|---|---|"]
    for v, g in r["aasist_per_variant"].items():
        j = r.get("judge_per_variant", {}).get(v, {}).get("accuracy")
        lines.append(f"| {v} | {g['n']} | {g['accuracy']:.3f} | {'' if j is None else f'{j:.3f}'} |")
    lines += ["", "| severity | pairs | AASIST |", "|---|---|---|"]
    lines += [f"| {s} | {g['n']} | {g['accuracy']:.3f} |" for s, g in r["aasist_per_severity"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", required=True, help="folder with SPLIT-*.tar (e.g. real/speech_realism/shards/speech_realism)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="AASIST.pth or AASIST-L.pth (a state dict)")
    ap.add_argument("--report", default=None, help="python -m eval evaluate report folder (scores_SPLIT.jsonl)")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)
    weights = Path(args.weights)
    if not weights.is_file():
        print(f"AASIST baseline skipped: no weights at {weights} (see ../shared/pretrained/README.md)")
        return 0
    result = run(Path(args.shards), weights, args.split, Path(args.report) if args.report else None)
    print(format_result(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
