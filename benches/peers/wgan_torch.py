"""The PyTorch baseline for kiln's small_mlp and adam families: the WGAN-GP critic and
generator of PI-GeM, differentiated by autograd, and torch.optim's fused Adam / AdamW.

Nets (kiln's small_mlp::wgan_critic / wgan_generator), fp32, Xavier-uniform weights, biases
U(-0.1, 0.1), x U(-1, 1) (the initialisation of kiln's GPU tests):
    critic     64 -> 128 x 3 (leaky ReLU 0.2) -> 1
    generator  32 -> 128 x 3 (tanh) -> 64
at B = 1000 and 4096 rows. The passes, as kiln times them (one kiln launch each):
    forward       y = net(x), parameters requiring grad (the graph the backward passes use)
    input_vjp     dx = autograd.grad(y, x, gy)              (forward done once, graph retained)
    param_grad    dW, db = autograd.grad(y, params, gy)      (idem)
    penalty_grad  u = autograd.grad(D(x).sum(), x, create_graph=True);
                  P = mean_b (|u_b| - 1)^2;  dP/dW, dP/db = autograd.grad(P, params)
                  (critic only; from the retained forward graph, as kiln's pass starts from the
                  forward's stash and computes u itself)
Each with TF32 off (fp32 matmuls: what kiln computes) and on. Accuracy of each pass against
the same autograd in float64: max |err| / max |ref| over the pass's outputs.

Adam: one torch.optim.Adam / AdamW step (fused=True, lr 1e-3, betas (0.9, 0.999), eps 1e-8,
weight decay 0.01 for the decay modes) over one fp32 parameter of n = 2^16 .. 2^26 elements
with a gradient set; GB/s counts 7 x 4 bytes per parameter (p, g, m, v read; p, m, v
written), as kiln's adam_bench does.

Every row: median of 20 CUDA-event-timed calls after 3 warm-up calls, a 2x-L2 memset before
each call (host launch overhead included, as in any eager training step).

Usage: wgan_torch.py OUT.json [--quick]   (--quick: 3 timed calls, B = 1000 and n <= 2^20 only)
"""
import json
import sys

import torch

from timing import L2Flush, median_us

NETS = {
    "critic": (64, 128, 3, 1, "leaky_relu"),
    "generator": (32, 128, 3, 64, "tanh"),
}


def make_net(d_in, width, depth, d_out, act, gen):
    dims = [d_in] + [width] * depth + [d_out]
    layers = []
    for l in range(depth + 1):
        lin = torch.nn.Linear(dims[l], dims[l + 1])
        a = (6.0 / (dims[l] + dims[l + 1])) ** 0.5
        with torch.no_grad():
            lin.weight.uniform_(-a, a, generator=gen)
            lin.bias.uniform_(-0.1, 0.1, generator=gen)
        layers.append(lin)
        if l < depth:
            layers.append(torch.nn.Tanh() if act == "tanh" else torch.nn.LeakyReLU(0.2))
    return torch.nn.Sequential(*layers)


def penalty_grads(net, x):
    """dP/dparams of P = mean_b (|grad_x D(x_b)| - 1)^2, and u."""
    x = x.detach().requires_grad_(True)
    y = net(x)
    u = torch.autograd.grad(y.sum(), x, create_graph=True)[0]
    p = ((u.norm(dim=1) - 1.0) ** 2).mean()
    # The last layer's bias does not reach grad_x D: its gradient is zero (allow_unused).
    params = list(net.parameters())
    grads = torch.autograd.grad(p, params, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, params)], u


def pass_outputs(net, x, gy, name):
    """The outputs of one pass, for the accuracy check."""
    params = list(net.parameters())
    if name == "forward":
        return [net(x)]
    if name == "penalty_grad":
        g, u = penalty_grads(net, x)
        return list(g) + [u]
    xr = x.detach().requires_grad_(True)
    y = net(xr)
    if name == "input_vjp":
        return list(torch.autograd.grad(y, xr, gy))
    return list(torch.autograd.grad(y, params, gy))


def rel_err(got, ref):
    err = max((g.double() - r).abs().max().item() for g, r in zip(got, ref))
    scale = max(r.abs().max().item() for r in ref)
    return err / max(scale, 1e-30)


def time_pass(net, x, gy, name, flush, reps):
    params = list(net.parameters())
    if name == "forward":
        xr = x.detach().requires_grad_(True)
        return median_us(lambda: net(xr), flush, reps=reps)
    xr = x.detach().requires_grad_(True)
    y = net(xr)  # once: the graph every timed call differentiates (retained)
    if name == "input_vjp":
        return median_us(lambda: torch.autograd.grad(y, xr, gy, retain_graph=True), flush, reps=reps)
    if name == "param_grad":
        return median_us(lambda: torch.autograd.grad(y, params, gy, retain_graph=True), flush, reps=reps)

    def gp():
        u = torch.autograd.grad(y.sum(), xr, create_graph=True, retain_graph=True)[0]
        p = ((u.norm(dim=1) - 1.0) ** 2).mean()
        # Retained: this backward also runs through the forward graph the next call reuses.
        return torch.autograd.grad(p, params, retain_graph=True, allow_unused=True)

    return median_us(gp, flush, reps=reps)


def adam_rows(flush, quick):
    rows = []
    sizes = [1 << 16, 1 << 20] if quick else [1 << 16, 1 << 20, 1 << 24, 1 << 26, 10_000_019]
    for n in sizes:
        for mode in ("none", "l2", "decoupled"):
            p = torch.nn.Parameter(torch.rand(n, device="cuda") * 2 - 1)
            p.grad = torch.rand(n, device="cuda") * 2 - 1
            if mode == "decoupled":
                opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.01, fused=True)
            else:
                opt = torch.optim.Adam([p], lr=1e-3, weight_decay=0.01 if mode == "l2" else 0.0, fused=True)
            opt.step()  # state (m, v) allocated outside the timing
            med, p20, p80 = median_us(opt.step, flush, reps=3 if quick else 20)
            gb_s = 28.0 * n / (med * 1e-6) / 1e9
            row = {"family": "adam", "params": n, "weight_decay": mode, "impl": "torch.optim fused=True",
                   "us": med, "p20_us": p20, "p80_us": p80, "gb_s": gb_s}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del opt, p
            torch.cuda.empty_cache()
    return rows


def main():
    out_path = sys.argv[1]
    quick = "--quick" in sys.argv[2:]
    reps = 3 if quick else 20
    flush = L2Flush()
    rows = []
    for name, (d_in, width, depth, d_out, act) in NETS.items():
        gen = torch.Generator().manual_seed(d_in * 1000 + width)
        net = make_net(d_in, width, depth, d_out, act, gen).cuda()
        net64 = make_net(d_in, width, depth, d_out, act, torch.Generator().manual_seed(0)).double().cuda()
        net64.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
        for rows_b in ([1000] if quick else [1000, 4096]):
            x = (torch.rand(rows_b, d_in, generator=gen) * 2 - 1).cuda()
            gy = (torch.rand(rows_b, d_out, generator=gen) * 2 - 1).cuda()
            passes = ["forward", "input_vjp", "param_grad"] + (["penalty_grad"] if d_out == 1 else [])
            for pname in passes:
                ref = [r.double() for r in pass_outputs(net64, x.double(), gy.double(), pname)]
                for tf32 in (False, True):
                    torch.backends.cuda.matmul.allow_tf32 = tf32
                    torch.backends.cudnn.allow_tf32 = tf32
                    row = {"family": "small_mlp", "net": name, "d_in": d_in, "width": width, "depth": depth,
                           "d_out": d_out, "activation": act, "rows": rows_b, "pass": pname, "tf32": tf32}
                    row["rel_err_vs_f64"] = rel_err(pass_outputs(net, x, gy, pname), ref)
                    med, p20, p80 = time_pass(net, x, gy, pname, flush, reps)
                    row.update({"us": med, "p20_us": p20, "p80_us": p80})
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        del net, net64
        torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows += adam_rows(flush, quick)
    result = {
        "what": "PyTorch baseline for small_mlp (WGAN-GP critic and generator passes by autograd, fp32, "
                "TF32 off and on) and adam (torch.optim Adam / AdamW, fused=True)",
        "how": "median of 20 CUDA-event-timed calls, 3 warm-up, 2x L2 memset before each call; "
               "backward passes differentiate one retained forward graph; rel_err_vs_f64 = max |err| / "
               "max |ref| over the pass's outputs vs the same autograd in float64; adam gb_s = 28 B per "
               "parameter / time",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "rows": rows,
    }
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)


main()
