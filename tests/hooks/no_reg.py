"""No regularization: zero importance and a zero penalty (the lower bound of the table)."""

import torch


def estimate_importance(model, dataset, prev_params, device):
    """Zero importance for every regularized parameter."""
    return {
        name.replace(".", "__"): torch.zeros_like(p)
        for named in model.param_list
        for name, p in named()
        if p.requires_grad
    }


def compute_regularization_loss(model, importance_dict, prev_params_dict):
    """Always 0."""
    return torch.zeros((), device=next(model.parameters()).device)
