"""The PyTorch autograd baseline for kiln's mlp_jet: a tanh MLP (d -> width, depth hidden tanh
layers, -> p linear) evaluated at N points together with grad u and the Laplacian, the way a
physics-informed loss computes them:

    u = net(x)                                              # x [N, d], requires_grad
    g = torch.autograd.grad(u[:, o].sum(), x, create_graph=True)      # per output o
    lap = sum_i torch.autograd.grad(g[:, i].sum(), x, retain_graph=True)[:, i]

fp32 weights and inputs (Xavier-uniform weights, biases U(-0.1, 0.1), x U(-1, 1): the same
initialisation as kiln's GPU tests), run twice: TF32 off (fp32 matmuls, what kiln's fma path
matches) and TF32 on (torch.backends.cuda.matmul.allow_tf32). Each: median of 20
CUDA-event-timed calls after 3 warm-up calls, the L2 flushed before each call (timing.py: a
read of a 2x-L2 buffer). Accuracy of
each mode against the same computation in float64 on the first 1024 points is reported as
max |err| / max |ref| per stream.

Training step (rows with "train": true; kiln's mlp_jet_backward does the same work): the
residual loss of -Lap u = f, L = mean_n (-Lap u(x_n) - f_n)^2 with f ~ U(-1, 1), by the jets
above with create_graph=True on every pass, then loss.backward() to every weight and bias
(grads set to None first). Accuracy: max |err| / max |ref| over each parameter's gradient
(worst tensor reported) and the loss, on the first 1024 points against float64.

Nets (kiln's fam::pinn_targets, p = 1, a scalar u): (d, width, depth, N) = (1, 64, 4, 2^20),
(2, 128, 4, 2^18), (20, 128, 4, 2^16).

Usage: pinn_torch.py OUT.json [--quick] [--p P]   (--quick: 3 timed calls; --p: outputs)
"""
import json
import sys

import torch

from timing import L2Flush, median_us

NETS = [(1, 64, 4, 1 << 20), (2, 128, 4, 1 << 18), (20, 128, 4, 1 << 16)]


def make_net(d, width, depth, p, gen):
    dims = [d] + [width] * depth + [p]
    layers = []
    for l in range(depth + 1):
        lin = torch.nn.Linear(dims[l], dims[l + 1])
        a = (6.0 / (dims[l] + dims[l + 1])) ** 0.5
        with torch.no_grad():
            lin.weight.uniform_(-a, a, generator=gen)
            lin.bias.uniform_(-0.1, 0.1, generator=gen)
        layers.append(lin)
        if l < depth:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers).cuda()


def jets(net, x):
    """u [N, p], grad [N, d, p], Laplacian [N, p] by reverse-mode autograd."""
    x = x.detach().requires_grad_(True)
    u = net(x)
    d, p = x.shape[1], u.shape[1]
    grads, laps = [], []
    for o in range(p):
        g = torch.autograd.grad(u[:, o].sum(), x, create_graph=True)[0]
        lap = torch.zeros_like(u[:, o])
        for i in range(d):
            h = torch.autograd.grad(g[:, i].sum(), x, retain_graph=True)[0]
            lap = lap + h[:, i]
        grads.append(g.detach())
        laps.append(lap.detach())
    return u.detach(), torch.stack(grads, dim=2), torch.stack(laps, dim=1)


def train_step(net, x, f):
    """Loss of the Laplacian residual and loss.backward(): the gradients land in net's .grad."""
    x = x.detach().requires_grad_(True)
    u = net(x)
    g = torch.autograd.grad(u.sum(), x, create_graph=True)[0]
    lap = torch.zeros_like(u[:, 0])
    for i in range(x.shape[1]):
        lap = lap + torch.autograd.grad(g[:, i].sum(), x, create_graph=True)[0][:, i]
    loss = ((-lap - f) ** 2).mean()
    for prm in net.parameters():
        prm.grad = None
    loss.backward()
    return loss.detach()


def train_grads(net, x, f):
    loss = train_step(net, x, f)
    # The output bias does not reach the Laplacian: autograd leaves its .grad unset (zero).
    return loss, [
        torch.zeros_like(prm) if prm.grad is None else prm.grad.detach().clone() for prm in net.parameters()
    ]


def rel_err(got, ref):
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def main():
    out_path = sys.argv[1]
    quick = "--quick" in sys.argv[2:]
    p = int(sys.argv[sys.argv.index("--p") + 1]) if "--p" in sys.argv else 1
    flush = L2Flush()
    rows = []
    for d, width, depth, n in NETS:
        gen = torch.Generator().manual_seed(d * 1000 + width)
        net = make_net(d, width, depth, p, gen)
        x = (torch.rand(n, d, generator=gen) * 2 - 1).cuda()
        net64 = make_net(d, width, depth, p, torch.Generator().manual_seed(0)).double()
        net64.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
        ref = jets(net64, x[:1024].double())
        f = (torch.rand(n, generator=gen) * 2 - 1).cuda()
        train_ref = train_grads(net64, x[:1024].double(), f[:1024].double()) if p == 1 else None
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            row = {"d": d, "width": width, "depth": depth, "p": p, "points": n, "tf32": tf32}
            got = jets(net, x[:1024])
            row["rel_err_vs_f64"] = {s: rel_err(g, r) for s, g, r in zip(("u", "grad", "laplacian"), got, ref)}
            try:
                med, p20, p80 = median_us(lambda: jets(net, x), flush, reps=3 if quick else 20)
                row.update({"us": med, "p20_us": p20, "p80_us": p80})
            except RuntimeError as e:  # out of memory on a large net
                torch.cuda.synchronize()
                row["error"] = str(e).splitlines()[0][:300]
            rows.append(row)
            print(json.dumps(row), flush=True)
            if train_ref is None:  # the residual loss is for a scalar u
                continue
            row = {"d": d, "width": width, "depth": depth, "p": p, "points": n, "tf32": tf32, "train": True}
            loss, grads = train_grads(net, x[:1024], f[:1024])
            row["rel_err_vs_f64"] = {
                "loss": rel_err(loss, train_ref[0]),
                "grads_worst_tensor": max(rel_err(g, r) for g, r in zip(grads, train_ref[1])),
            }
            try:
                med, p20, p80 = median_us(lambda: train_step(net, x, f), flush, reps=3 if quick else 20)
                row.update({"us": med, "p20_us": p20, "p80_us": p80})
            except RuntimeError as e:  # out of memory on a large net
                torch.cuda.synchronize()
                row["error"] = str(e).splitlines()[0][:300]
            rows.append(row)
            print(json.dumps(row), flush=True)
        del net, net64, x, f
        torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = False
    result = {
        "what": "PyTorch autograd baseline for mlp_jet: u, grad u (autograd.grad, create_graph), "
                "Laplacian (one more autograd pass per input dim), fp32, TF32 off and on; train rows "
                "(mlp_jet_backward): the same jets with create_graph, mean (-Lap u - f)^2, loss.backward()",
        "how": "median of 20 CUDA-event-timed calls, 3 warm-up, L2 flushed by a read of a 2x-L2 buffer and a ~50 us spin kernel before each call (timing.py); "
               "rel_err_vs_f64 = max |err| / max |ref| on the first 1024 points vs the same autograd in float64 "
               "(train rows: the loss, and the worst parameter tensor's gradient)",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "rows": rows,
    }
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)


main()
