"""
The file agents edit: a small modern GPT trained for a fixed budget (prepare.BUDGET): seconds of training on a
GPU, like autoresearch, or tokens of training data on a CPU (prepare.BUDGET_UNIT). Under the runner the data
loader ends when the budget is used, and the runner times the training itself.

Rotary embeddings, RMSNorm, QK-norm, ReLU² MLP, untied head, logit softcap, optional sliding-window
attention; Muon for matrices, AdamW for embeddings, head and scalars; a time-based schedule with warmdown.
Importable without side effects: the trusted evaluation imports this file and calls build_model(config).

Knobs: UPPER_CASE constants below, one `NAME = literal  # comment` line each, edited directly (no CLI).
Size knobs come in pairs, CPU_NAME and GPU_NAME: prepare.PROFILE (cpu|gpu, by device or SWARM_PROFILE)
picks one of the pair, so edit the line of the profile your run targets. The others apply to both.
"""

import contextlib
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare

# ---------------------------------------------------------------------------
# Model size, per profile (prepare.PROFILE picks CPU_* or GPU_*)
# ---------------------------------------------------------------------------
CPU_DEPTH = 4                     # transformer blocks
GPU_DEPTH = 8
CPU_ASPECT_RATIO = 64             # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
GPU_ASPECT_RATIO = 80
CPU_HEAD_DIM = 64                 # width of one attention head
GPU_HEAD_DIM = 128
CPU_WINDOW_PATTERN = "L"          # per layer, cycled: L = full causal, S = sliding window of SHORT_WINDOW_FRAC
GPU_WINDOW_PATTERN = "SSSL"
CPU_DEVICE_BATCH_SIZE = 8         # rows per forward/backward
GPU_DEVICE_BATCH_SIZE = 64
CPU_TOTAL_BATCH_SIZE = 2**11      # tokens per optimizer step (gradient accumulation fills the gap)
GPU_TOTAL_BATCH_SIZE = 2**19

# ---------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------
MLP_RATIO = 4                     # MLP hidden width = MLP_RATIO * model_dim
SOFTCAP = 15.0                    # logits = SOFTCAP * tanh(logits / SOFTCAP); 0 disables
SHORT_WINDOW_FRAC = 0.5           # sliding window of "S" layers, as a fraction of the sequence length
ROPE_BASE = 10000.0               # rotary embedding base frequency

# ---------------------------------------------------------------------------
# Optimization
# ---------------------------------------------------------------------------
MATRIX_LR = 0.04                  # Muon, for the 2-D weights inside blocks
EMBEDDING_LR = 0.6                # AdamW, token embedding (scaled by (model_dim/768)^-0.5)
UNEMBEDDING_LR = 0.004            # AdamW, lm_head (scaled by (model_dim/768)^-0.5)
SCALAR_LR = 0.5                   # AdamW, per-layer residual scalars
WEIGHT_DECAY = 0.0                # decoupled weight decay on Muon matrices
ADAM_BETAS = (0.8, 0.95)          # AdamW betas
MUON_MOMENTUM = 0.95              # Muon (Nesterov) momentum
NS_STEPS = 5                      # Newton-Schulz iterations that orthogonalize Muon's update
WARMUP_RATIO = 0.0                # fraction of the budget with linear LR warm-up
WARMDOWN_RATIO = 0.5              # fraction of the budget at the end with linear LR decay
FINAL_LR_FRAC = 0.0               # LR multiplier at the end of the warmdown
GRAD_CLIP = 0.0                   # max grad norm; 0 disables

# ---------------------------------------------------------------------------
# Runtime
# ---------------------------------------------------------------------------
COMPILE = True                    # torch.compile the model on CUDA (never on CPU: the cold compile eats the budget)
LOSS_EXPLODE = 20.0               # fail fast when the loss exceeds this (nats) after the first steps
LOG_INTERVAL = 1.0                # seconds between progress lines


# tests only (tests/test_gpu_paths.py): take the CUDA code paths (torch.compile, bf16 autocast, bf16 Newton-Schulz,
# MFU, flex attention where no gradient is needed: torch has no flex backward on CPU) on CPU too, so CI catches
# a mistake in them before the first GPU run does
_gpu_paths_on_cpu = False


def knob(name):
    """The value of a per-profile knob (CPU_NAME or GPU_NAME) for the current profile."""
    return globals()[f"{prepare.PROFILE.upper()}_{name}"]


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------

def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x, cos, sin):
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


_flex_cache = {}


def sliding_window_attention(q, k, v, window):
    """Causal attention over the last `window` positions: flex attention on CUDA, a masked SDPA on CPU."""
    T = q.size(-2)
    if q.device.type == "cuda" or (_gpu_paths_on_cpu and not q.requires_grad):  # CPU flex: forward only
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        key = (T, window, q.device)
        if key not in _flex_cache:
            def mask_mod(b, h, qi, ki):
                return (qi >= ki) & (qi - ki < window)
            block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=T, KV_LEN=T, device=q.device)
            _flex_cache[key] = (block_mask, torch.compile(flex_attention, dynamic=False))
        block_mask, flex = _flex_cache[key]
        return flex(q, k, v, block_mask=block_mask)
    i = torch.arange(T, device=q.device)
    mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Attention(nn.Module):
    def __init__(self, dim, n_head, head_dim, window):
        super().__init__()
        self.n_head, self.head_dim, self.window = n_head, head_dim, window
        self.c_q = nn.Linear(dim, n_head * head_dim, bias=False)
        self.c_k = nn.Linear(dim, n_head * head_dim, bias=False)
        self.c_v = nn.Linear(dim, n_head * head_dim, bias=False)
        self.c_proj = nn.Linear(n_head * head_dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))  # QK-norm
        if self.window >= T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = sliding_window_attention(q, k, v, self.window)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, dim, ratio):
        super().__init__()
        self.c_fc = nn.Linear(dim, ratio * dim, bias=False)
        self.c_proj = nn.Linear(ratio * dim, dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU²


class Block(nn.Module):
    def __init__(self, dim, n_head, head_dim, mlp_ratio, window):
        super().__init__()
        self.attn = Attention(dim, n_head, head_dim, window)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x, cos, sin):
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, sequence_len, n_layer, n_head, head_dim, n_embd, mlp_ratio, windows,
                 softcap, rope_base):
        super().__init__()
        self.softcap = softcap
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, head_dim, mlp_ratio, w) for w in windows)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)  # untied from wte
        self.resid_lambdas = nn.Parameter(torch.ones(n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(n_layer))
        inv_freq = 1.0 / (rope_base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(sequence_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", freqs.cos()[None, None], persistent=False)
        self.register_buffer("sin", freqs.sin()[None, None], persistent=False)

    @torch.no_grad()
    def init_weights(self):
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                bound = 3**0.5 * lin.in_features**-0.5
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.0)

    def forward(self, idx):
        """Logits (B, T, vocab) in float32; the caller computes any loss."""
        T = idx.size(1)
        cos, sin = self.cos[:, :, :T], self.sin[:, :, :T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            x = block(x, cos, sin)
        logits = self.lm_head(norm(x)).float()
        if self.softcap:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits


def model_config(vocab_size, sequence_len):
    """The architecture as plain values (saved to config.json, read back by build_model)."""
    depth, head_dim = knob("DEPTH"), knob("HEAD_DIM")
    n_embd = -(-depth * knob("ASPECT_RATIO") // head_dim) * head_dim
    pattern = knob("WINDOW_PATTERN")
    short = max(1, int(SHORT_WINDOW_FRAC * sequence_len))
    windows = [sequence_len if pattern[i % len(pattern)] == "L" else short for i in range(depth)]
    windows[-1] = sequence_len  # the last layer always sees the full context
    return dict(vocab_size=vocab_size, sequence_len=sequence_len, n_layer=depth, n_head=n_embd // head_dim,
                head_dim=head_dim, n_embd=n_embd, mlp_ratio=MLP_RATIO, windows=windows, softcap=SOFTCAP,
                rope_base=ROPE_BASE)


def build_model(config):
    """Build the model from a saved config.json (the trusted evaluation calls this)."""
    return GPT(**config["model_config"])


# ---------------------------------------------------------------------------
# Optimizer: Muon for matrices, AdamW for the rest
# ---------------------------------------------------------------------------

def zeropower_via_newtonschulz5(G, steps):
    """Approximately orthogonalize G (quintic Newton-Schulz, Keller Jordan's coefficients)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if (G.is_cuda or _gpu_paths_on_cpu) else G.float()
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if transposed else X).to(G.dtype)


class Muon:
    """Muon for 2-D matrices. Plain classes, not torch.optim.Optimizer: its methods import torch._dynamo on
    first use (2-3 s of CPU startup) just to keep themselves out of torch.compile, which never sees them."""

    def __init__(self, params, lr, momentum, weight_decay, ns_steps):
        self.param_groups = [dict(params=list(params), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                  ns_steps=ns_steps)]
        self.state = {}

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(p, {})
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"])  # Nesterov
                update = zeropower_via_newtonschulz5(g, group["ns_steps"])
                scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


class AdamW:
    """AdamW (decoupled weight decay), the same update as torch.optim.AdamW."""

    def __init__(self, param_groups, betas, eps, weight_decay):
        self.param_groups = [dict(g, params=list(g["params"])) for g in param_groups]
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.state = {}

    @torch.no_grad()
    def step(self):
        beta1, beta2 = self.betas
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(p, {})
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                if self.weight_decay:
                    p.mul_(1 - group["lr"] * self.weight_decay)
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(self.eps)
                p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1**t))


def make_optimizers(model):
    dim_scale = (model.wte.weight.size(1) / 768) ** -0.5
    matrices = [p for b in model.blocks for p in b.parameters() if p.ndim == 2]
    adam_groups = [
        dict(params=[model.wte.weight], lr=EMBEDDING_LR * dim_scale),
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * dim_scale),
        dict(params=[model.resid_lambdas, model.x0_lambdas], lr=SCALAR_LR),
    ]
    adam = AdamW(adam_groups, betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0)
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY, ns_steps=NS_STEPS)
    for opt in (adam, muon):
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return [adam, muon]


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return (progress + 1e-8) / WARMUP_RATIO
    if progress <= 1.0 - WARMDOWN_RATIO:
        return 1.0
    frac = (1.0 - progress) / WARMDOWN_RATIO
    return frac + (1 - frac) * FINAL_LR_FRAC


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

def main():
    t_start = time.time()
    profile, seq_len, seed = prepare.PROFILE, prepare.MAX_SEQ_LEN, prepare.SEED
    budget_unit, budget = prepare.BUDGET_UNIT, prepare.BUDGET  # "seconds" of training or "tokens" of data
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    is_cuda = device.type == "cuda"
    gpu_paths = is_cuda or _gpu_paths_on_cpu
    torch.manual_seed(seed)
    if is_cuda:
        torch.cuda.manual_seed(seed)
        torch.set_float32_matmul_precision("high")

    data_dir = prepare.get_data_dir()
    meta = prepare.read_meta(data_dir)
    vocab_size = meta["vocab_size"]
    config = dict(model_config=model_config(vocab_size, seq_len), vocab_size=vocab_size, profile=profile,
                  dataset_fingerprint=meta["dataset_fingerprint"],
                  tokenizer_fingerprint=meta["tokenizer_fingerprint"])
    model = build_model(config)
    model.init_weights()
    model.to(device)
    num_params = sum(p.numel() for p in model.parameters())
    optimizers = make_optimizers(model)
    fwd = torch.compile(model, dynamic=False) if (gpu_paths and COMPILE) else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if gpu_paths else contextlib.nullcontext()

    batch_size = knob("DEVICE_BATCH_SIZE")
    tokens_per_fwd = batch_size * seq_len
    grad_accum = max(1, knob("TOTAL_BATCH_SIZE") // tokens_per_fwd)
    tokens_per_step = tokens_per_fwd * grad_accum
    warmup = prepare.EXCLUDED_WARMUP_STEPS
    loader = prepare.make_dataloader(batch_size, seq_len, seed=seed, device=device, data_dir=data_dir,
                                     warmup_batches=warmup * grad_accum)
    # FLOPs per token: 6 * matmul params + attention (12 * layers * dim * seq); for MFU on CUDA
    n_embd, n_layer = config["model_config"]["n_embd"], config["model_config"]["n_layer"]
    flops_per_token = 6 * (num_params - model.wte.weight.numel()) + 12 * n_layer * n_embd * seq_len
    peak_flops = prepare.PEAK_FLOPS if (gpu_paths and prepare.PEAK_FLOPS) else float("inf")  # of the hw class

    budget_text = f"{budget:.0f}s" if budget_unit == "seconds" else f"{int(budget):,} tokens"
    print(f"profile: {profile} | params: {num_params / 1e6:.2f}M | dim {n_embd} x {n_layer} layers | "
          f"batch {batch_size}x{seq_len} x{grad_accum} accum | budget {budget_text}", flush=True)
    step, training_time, total_tokens, counted_tokens, smooth = 0, 0.0, 0, 0, None
    last_log, loss_f = 0.0, float("nan")

    def progress_now():
        used = counted_tokens if budget_unit == "tokens" else training_time
        return min(used / budget, 1.0)

    while True:
        t0 = time.time()
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr_multiplier(progress_now())
        try:
            for _ in range(grad_accum):
                x, y, _ = next(loader)
                with autocast:
                    logits = fwd(x)
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
                (loss / grad_accum).backward()
        except StopIteration:  # the runner's feed ended: the budget is used
            model.zero_grad(set_to_none=True)
            break
        loss_f = loss.item()
        if not math.isfinite(loss_f) or (step > prepare.EXCLUDED_WARMUP_STEPS and loss_f > LOSS_EXPLODE):
            print(f"FAIL: nan loss at step {step}" if not math.isfinite(loss_f)
                  else f"FAIL: nan loss at step {step} (exploding: {loss_f:.2f})", flush=True)
            sys.exit(3)
        if GRAD_CLIP:
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        if is_cuda:
            torch.cuda.synchronize()
        dt = time.time() - t0
        if step >= warmup:  # compile/warm-up steps do not count
            training_time += dt
            counted_tokens += tokens_per_step
        total_tokens += tokens_per_step
        step += 1
        smooth = loss_f if smooth is None else 0.9 * smooth + 0.1 * loss_f
        if budget_unit == "tokens":
            done = counted_tokens + tokens_per_step > budget  # no whole step left in the budget
        else:
            done = training_time >= budget
        if time.time() - last_log >= LOG_INTERVAL or done:
            last_log = time.time()
            print(f"step {step} | progress {progress_now():.4f} | loss {loss_f:.4f} | "
                  f"tok/s {int(tokens_per_step / dt)}", flush=True)
        if done:
            break

    out_dir = prepare.OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().float().cpu() for k, v in model.state_dict().items()}, out_dir / "model.pt")
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))

    results = {}
    if not prepare.RUNNER_MODE:  # by hand: the same trusted evaluation the runner runs
        val_dir = prepare.get_val_dir()
        if val_dir is None:
            print("no validation split available (set SWARM_VAL_DIR); skipping evaluation", flush=True)
        else:
            res = prepare.evaluate(__file__, out_dir, val_dir)
            if res.status != "ok":
                print(f"evaluation: {res.status}: {res.reason}", flush=True)
            results["val_bpb"] = f"{res.val_bpb:.6f}" if res.val_bpb is not None else "nan"
    mfu = 100 * flops_per_token * counted_tokens / training_time / peak_flops if training_time else 0.0  # warm-up excluded from both
    results.update(
        training_seconds=f"{training_time:.1f}",
        total_seconds=f"{time.time() - t_start:.1f}",
        peak_vram_mb=f"{torch.cuda.max_memory_allocated() / 2**20:.1f}" if is_cuda else "0.0",
        mfu_percent=f"{mfu:.2f}",
        total_tokens_M=f"{total_tokens / 1e6:.3f}",
        num_steps=str(step),
        num_params_M=f"{num_params / 1e6:.3f}",
        budget=f"{budget:g}",
        budget_unit=budget_unit,
        final_loss=f"{loss_f:.6f}",
        profile=profile,
        dataset_fingerprint=meta["dataset_fingerprint"],
        tokenizer_fingerprint=meta["tokenizer_fingerprint"],
    )
    print("---")
    for k, v in results.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
