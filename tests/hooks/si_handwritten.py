"""Hand-written Synaptic Intelligence (HARNESS.md section 6): Omega = W / (Delta^2 + epsilon).

A hook module written to the contract by someone outside the project: the harness must run it unchanged.
"""

import torch


def estimate_importance(model, dataset, prev_params, device):
    """Path integral W of this context divided by the squared total change plus damping (published SI)."""
    omega = {}
    for named in model.param_list:
        for name, param in named():
            if not param.requires_grad:
                continue
            key = name.replace(".", "__")
            delta = param.detach() - prev_params[key]
            omega[key] = model._custom_W[key] / (delta**2 + model.epsilon)
    return omega


def compute_regularization_loss(model, importance_dict, prev_params_dict):
    """sum Omega (theta - theta*)^2, no 0.5."""
    loss = torch.zeros((), device=next(model.parameters()).device)
    for name, param in model.named_parameters():
        key = name.replace(".", "__")
        if key in importance_dict:
            loss = loss + (importance_dict[key] * (param - prev_params_dict[key]) ** 2).sum()
    return loss
