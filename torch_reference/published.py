"""A PyTorch implementation of the published MicroRWKV model, written from its specification
(the published training code, faults included) for the tests and benchmarks only: torch is
the test extra, never a dependency of the library.

It keeps the original's parameter names, so its `state_dict()` is what the published
training script saves, and its `generate` is the published sampler (full re-forward per token).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rms(x):
    return x / (x.norm(2, dim=-1, keepdim=True) * x.shape[-1] ** -0.5 + 1e-8)


def shift(x):
    return F.pad(x, (0, 0, 1, -1))


def wkv_loop(r, k, v, w, u):
    """y_t = r_t @ (S + u k_t^T v_t), S <- w S + k_t^T v_t, token by token. r, k, v [B, T, H, N]."""
    B, T, H, N = r.shape
    S = torch.zeros(B, H, N, N, dtype=torch.float32)
    ys = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        ys.append(torch.einsum("bhi,bhij->bhj", r[:, t], S + u * kv))
        S = w * S + kv
    return torch.stack(ys, 1)


def wkv_chunked(r, k, v, w, u):
    """The same in chunks of Q = 256 / 128 / T (as the published code picks), exact per chunk."""
    B, T, H, N = r.shape
    Q = 256 if T % 256 == 0 else 128 if T % 128 == 0 else T
    w, u = w.view(H), u.view(H)
    t = torch.arange(Q)
    lag = (t[:, None] - t[None, :] - 1)
    logw = torch.log(w).view(H, 1, 1)
    D = torch.where(lag >= 0, torch.exp(logw * lag.clamp(min=0)), torch.zeros(()))
    D = torch.where(lag == -1, u.view(H, 1, 1).expand(H, Q, Q), D)
    decay_in = torch.exp(torch.log(w)[None, :] * t[:, None])            # [Q, H]
    decay_out = torch.exp(torch.log(w)[None, :] * (Q - 1 - t)[:, None])
    S = torch.zeros(B, H, N, N, dtype=torch.float32)
    ys = []
    for c in range(T // Q):
        rc, kc, vc = (z[:, c * Q:(c + 1) * Q] for z in (r, k, v))
        A = torch.einsum("bthn,bshn->bhts", rc, kc) * D
        y = torch.einsum("bhts,bshn->bthn", A, vc)
        y = y + torch.einsum("bthn,bhnm->bthm", rc * decay_in[None, :, :, None], S)
        S = torch.exp(torch.log(w) * Q).view(1, H, 1, 1) * S + torch.einsum(
            "bshn,bshm->bhnm", kc * decay_out[None, :, :, None], vc)
        ys.append(y)
    return torch.cat(ys, 1)


class TMix(nn.Module):
    def __init__(self, a, i, chunked_wkv=False):
        super().__init__()
        self.chunked_wkv = chunked_wkv
        C, H, L = a["n_embd"], a["n_head"], a["n_layer"]
        self.H, self.N = H, C // H
        r0, r1 = i / (L - 1), 1.0 - i / L
        ddd = torch.arange(C, dtype=torch.float32) / C
        self.time_maa_k = nn.Parameter((1.0 - ddd ** r1).view(1, 1, C))
        self.time_maa_v = nn.Parameter((1.0 - (ddd ** r1 + 0.3 * r0)).view(1, 1, C))
        self.time_maa_r = nn.Parameter((1.0 - ddd ** (0.5 * r1)).view(1, 1, C))
        self.time_maa_g = nn.Parameter((1.0 - ddd ** (0.5 * r1)).view(1, 1, C))
        h = torch.arange(H, dtype=torch.float32) / (H - 1)
        self.time_decay = nn.Parameter((-6 + 5 * h ** (0.7 + 1.3 * r0)).view(H, 1))
        self.time_faaaa = nn.Parameter((r0 * (1 - h)).view(H, 1))
        b = a["bias"]
        self.receptance, self.key, self.value = (nn.Linear(C, C, bias=b) for _ in range(3))
        self.gate, self.output = nn.Linear(C, C, bias=b), nn.Linear(C, C, bias=b)
        self.ln_x = nn.GroupNorm(H, C, eps=64e-5)

    def forward(self, x):
        B, T, C = x.shape
        H, N = self.H, self.N
        xx = shift(x) - x
        xk, xv = x + xx * self.time_maa_k, x + xx * self.time_maa_v
        xr, xg = x + xx * self.time_maa_r, x + xx * self.time_maa_g
        r = self.receptance(xr).view(B, T, H, N).float()
        k = self.key(xk).view(B, T, H, N).float()
        v = self.value(xv).view(B, T, H, N).float()
        g = F.silu(self.gate(xg))
        w = torch.exp(-torch.exp(self.time_decay.float())).view(1, H, 1, 1)
        u = self.time_faaaa.float().view(1, H, 1, 1)
        y = wkv_chunked(r, k, v, w, u) if self.chunked_wkv else wkv_loop(r, k, v, w, u)
        y = y.to(x.dtype).reshape(B * T, C)
        y = self.ln_x(y).view(B, T, C)
        return self.output(y * g)


class CMix(nn.Module):
    def __init__(self, a, i):
        super().__init__()
        C, L, b = a["n_embd"], a["n_layer"], a["bias"]
        ddd = torch.arange(C, dtype=torch.float32) / C
        r1 = 1.0 - i / L
        self.time_maa_k = nn.Parameter((1.0 - ddd ** r1).view(1, 1, C))
        self.time_maa_r = nn.Parameter((1.0 - ddd ** r1).view(1, 1, C))
        self.key, self.value = nn.Linear(C, 3 * C, bias=b), nn.Linear(3 * C, C, bias=b)
        self.receptance = nn.Linear(C, C, bias=b)

    def forward(self, x):
        xx = shift(x) - x
        xk, xr = x + xx * self.time_maa_k, x + xx * self.time_maa_r
        return torch.sigmoid(self.receptance(xr)) * self.value(torch.relu(self.key(xk)) ** 2)


class SWA(nn.Module):
    def __init__(self, a, W=256):
        super().__init__()
        C = a["n_embd"]
        self.H, self.N, self.W = a["n_head"], C // a["n_head"], W
        self.qkv, self.proj = nn.Linear(C, 3 * C, bias=False), nn.Linear(C, C, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        H, N, W = self.H, self.N, self.W
        q, k, v = self.qkv(x).view(B, T, 3, H, N).permute(2, 0, 3, 1, 4)
        q = q * N ** -0.5
        P = (W - T % W) % W
        q, k, v = (F.pad(z, (0, 0, 0, P)).reshape(B * H, W, -1) for z in (q, k, v))
        o = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        o = o.reshape(B, H, T + P, N)[:, :, :T].permute(0, 2, 1, 3).reshape(B, T, C)
        return self.proj(o)


class GQA(nn.Module):
    def __init__(self, a, G=4):
        super().__init__()
        C = a["n_embd"]
        self.H, self.G = a["n_head"], G
        self.qkvw, self.out = nn.Linear(C, 4 * C, bias=False), nn.Linear(C, C, bias=False)

    def forward(self, z):
        B, T, C = z.shape
        H, G = self.H, self.G
        d = C // (G * H)
        blocks = [P.split(C // G, dim=-1) for P in self.qkvw(z).split(C, dim=-1)]
        Z = [torch.cat([blocks[j][i] for j in range(4)], dim=0) for i in range(G)]
        q, k, v = (t.reshape(G * B, H, T, d).transpose(1, 2) for t in Z[:3])
        a = torch.softmax((q @ k.transpose(-1, -2)) * d ** -0.5, dim=-1)
        o = (a @ v).transpose(1, 2).reshape(B, T, C)
        return self.out(o * Z[3].reshape(B, T, C))


class MoE(nn.Module):
    def __init__(self, a):
        super().__init__()
        D, E, A, X = a["dim"], a["num_experts"], a["num_active_experts"], int(a["expert_dim"] * 1.2)
        self.A = A
        self.gate = nn.Linear(D, E)
        self.experts = nn.ModuleList(nn.Linear(D, X) for _ in range(A))
        self.fc = nn.Linear(X, D)

    def forward(self, x):
        s = torch.softmax(self.gate(x), dim=-1)
        e = [expert(x) for expert in self.experts]
        return self.fc(sum(s[..., j:j + 1] * e[j] for j in range(self.A)))


class Block(nn.Module):
    def __init__(self, a, i, chunked_wkv=False):
        super().__init__()
        self.tmix, self.cmix = TMix(a, i, chunked_wkv), CMix(a, i)
        self.sliding_attn, self.grouped_attn, self.moe = SWA(a), GQA(a), MoE(a)

    def forward(self, x):
        x = x + self.tmix(rms(x))
        x = x + self.cmix(rms(x))
        x = x + self.sliding_attn(x)
        x = x + self.grouped_attn(self.tmix(x))
        return x + self.moe(x)


class PublishedTorchModel(nn.Module):
    """The published model. chunked_wkv: the published code's chunked WKV (fast, what the benchmarks
    time) instead of the token-by-token loop (the plainest form, what the tests compare against)."""

    def __init__(self, model_args, chunked_wkv=False):
        super().__init__()
        a = dict(model_args)
        self.block_size = a["block_size"]
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(a["vocab_size"], a["n_embd"]),
            wpe=nn.Embedding(a["block_size"], a["n_embd"]),
            h=nn.ModuleList(Block(a, i, chunked_wkv) for i in range(a["n_layer"])),
            ln_f=nn.LayerNorm(a["n_embd"], bias=a["bias"]),
        ))
        self.lm_head = nn.Linear(a["n_embd"], a["vocab_size"], bias=False)
        self.transformer.wte.weight = self.lm_head.weight   # tied
        for name, p in self.named_parameters():
            if name.endswith(".weight") and p.dim() == 2:
                std = 0.02 / math.sqrt(2 * a["n_layer"]) if name.endswith("tmix.output.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith(".bias") and "ln_" not in name:
                nn.init.zeros_(p)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """The published sampler: crop to block_size, full forward, last position, top-k, sample."""
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.block_size:])[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            idx = torch.cat([idx, torch.multinomial(F.softmax(logits, dim=-1), 1)], dim=1)
        return idx


def perturb_to_trained_scale(model, seed=0):
    """Spec section 7: add Normal(0, 0.05) to matrices and Normal(0, 0.3) to vectors so every path shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            std = 0.05 if p.dim() >= 2 and min(p.shape) > 1 else 0.3
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def save_published_checkpoint(path, model, model_args, prefix="", dtype=None):
    """Save as the published training script does (optionally with a prefix and a cast)."""
    model.zero_grad(set_to_none=True)
    sd = {prefix + k: (v.to(dtype) if dtype is not None else v.clone()) for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)      # lr 0: a real optimizer state, same weights
    idx = torch.randint(0, model_args["vocab_size"], (1, 8), generator=torch.Generator().manual_seed(0))
    model(idx).square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.save({"model": sd, "model_args": dict(model_args), "config": {"learning_rate": 6e-4, "dataset": "tinystories"},
                "optimizer": opt.state_dict(), "iter_num": 500, "best_val_loss": torch.tensor(1.25)}, path)
