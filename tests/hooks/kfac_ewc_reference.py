"""K-FAC EWC written by hand, the way the field's reference code computes it (one example, one label at a time).

The check on the generated `kfac_ewc` preset: per nn.Linear layer A = mean_n a a^T (a: input with a 1 for the
bias) and G = mean_n sum_j p_j g_j g_j^T (g_j: gradient of -log p_j with respect to the layer's output), over
the first 200 examples in eval mode; contexts merged into one pair by (A_o + A_n / pi, G_o + pi G_n),
pi = sqrt(tr G_o tr A_n / (tr G_n tr A_o)); penalty 0.5 sum over layers of sum(dW * (G dW A)), dW = [W b] - anchor.
Every parameter of the networks it is used on is in an nn.Linear layer.
"""

import torch

N_EXAMPLES = 200


def _layers(model):
    names = {id(p): n.replace(".", "__") for n, p in model.named_parameters()}
    return [(names[id(m.weight)], m) for m in model.modules() if isinstance(m, torch.nn.Linear)]


def estimate_importance(model, dataset, prev_params, device):
    layers = _layers(model)
    inputs = {}
    handles = []
    for key, m in layers:

        def keep(module, args, output, key=key):
            inputs[key] = args[0].detach()
            output.retain_grad()
            inputs[key + ":out"] = output

        handles.append(m.register_forward_hook(keep))
    sums = {key: [0.0, 0.0] for key, _ in layers}
    n = min(N_EXAMPLES, len(dataset))
    was_training = model.training
    model.eval()
    try:
        for i in range(n):
            x, _ = dataset[i]
            out = model(x[None].to(device))
            probs = torch.softmax(out, dim=1).detach()[0]
            for j in range(out.shape[1]):
                model.zero_grad()
                for key, _ in layers:
                    inputs[key + ":out"].grad = None
                loss = -torch.log_softmax(out, dim=1)[0, j]
                loss.backward(retain_graph=True)
                for key, _ in layers:
                    a = torch.cat([inputs[key][0], torch.ones(1, dtype=out.dtype)])
                    g = inputs[key + ":out"].grad[0]
                    sums[key][0] = sums[key][0] + probs[j] * torch.outer(a, a)
                    sums[key][1] = sums[key][1] + probs[j] * torch.outer(g, g)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    kept = getattr(model, "_reference_kfac", {})
    for key, _ in layers:
        A, G = sums[key][0] / n, sums[key][1] / n
        if key in kept:
            Ao, Go = kept[key]
            pi = torch.sqrt(torch.trace(Go) * torch.trace(A)) / torch.sqrt(torch.trace(G) * torch.trace(Ao))
            A, G = Ao + A / pi, Go + G * pi
        kept[key] = (A, G)
    model._reference_kfac = kept
    return {}


def compute_regularization_loss(model, importance_dict, prev_params_dict):
    kept = getattr(model, "_reference_kfac", None)
    if not kept:
        return torch.zeros(())
    total = 0.0
    for key, m in _layers(model):
        A, G = kept[key]
        bias_key = key.replace("weight", "bias")
        p = torch.cat([m.weight, m.bias[:, None]], 1)
        p0 = torch.cat([prev_params_dict[key], prev_params_dict[bias_key][:, None]], 1)
        d = p - p0
        total = total + torch.sum(d * (G @ d @ A))
    return 0.5 * total
