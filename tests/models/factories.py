"""Small hand-made models and batches for the model tests, plus plain reference implementations
(``*_ref``) written the way the original code computes (gathering every vector, float64)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinykg.models import CKAN, KGCN, KGNNLS, RippleNet

NAMES = ("kgcn", "kgnn-ls", "ripplenet", "ckan")

# Last.FM as KGCN ships it: 1,872 users, 3,846 items, 9,366 entities, 60 relations.
LASTFM = dict(num_users=1872, num_items=3846, num_entities=9366, num_relations=60)
TOY = dict(num_users=30, num_items=40, num_entities=90, num_relations=5)


def batch(num_users: int, num_items: int, batch_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(0, num_users, (batch_size,), generator=g)
    item = torch.randint(0, num_items, (batch_size,), generator=g)
    label = torch.randint(0, 2, (batch_size,), generator=g).float()
    return user, item, label


def make_model(name: str, compression=None, sizes: dict = TOY, seed: int = 0, **kw):
    """Model ``name`` over random graph structures of the given sizes; ``kw`` overrides its settings."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    num_users, num_items = sizes["num_users"], sizes["num_items"]
    num_entities, num_relations = sizes["num_entities"], sizes["num_relations"]

    def ints(high, *shape):
        return torch.randint(0, high, shape, generator=g)

    if name in ("kgcn", "kgnn-ls"):
        settings = dict(embedding_dim=8, num_layers=2, num_neighbors=4)
        settings.update(kw)
        k = settings["num_neighbors"]
        adj = (ints(num_entities, num_entities, k), ints(num_relations, num_entities, k))
        if name == "kgcn":
            return KGCN(num_users, num_entities, num_relations, *adj, compression=compression, **settings)
        rows = 4 * num_users
        train = (ints(num_users, rows), ints(num_items, rows), ints(2, rows))
        return KGNNLS(num_users, num_entities, num_relations, *adj, *train, compression=compression, **settings)
    if name == "ripplenet":
        num_hops, num_memory = kw.pop("num_hops", 2), kw.pop("num_memory", 8)
        settings = dict(embedding_dim=8, kge_weight=0.01, l2_weight=1e-4)
        settings.update(kw)
        shape = (num_users, num_hops, num_memory)
        return RippleNet(
            num_users, num_entities, num_relations,
            ints(num_entities, *shape), ints(num_relations, *shape), ints(num_entities, *shape),
            compression=compression, **settings,
        )
    num_layers = kw.pop("num_layers", 2)
    user_set_size, item_set_size = kw.pop("user_set_size", 4), kw.pop("item_set_size", 8)
    settings = dict(embedding_dim=8)
    settings.update(kw)
    us, its = (num_users, num_layers, user_set_size), (num_items, num_layers, item_set_size)
    return CKAN(
        num_users, num_items, num_entities, num_relations,
        ints(num_entities, *us), ints(num_relations, *us), ints(num_entities, *us),
        ints(num_entities, *its), ints(num_relations, *its), ints(num_entities, *its),
        compression=compression, **settings,
    )


# --------------------------------------------------------------------------------------------
# References: the original computations, written plainly
# --------------------------------------------------------------------------------------------


def kgcn_encode_ref(model: KGCN, user, item):
    """(user vectors, item vectors, attention weights per hop) as the TF code computes them."""
    d, k, depth = model.embedding_dim, model.num_neighbors, model.num_layers
    batch_size = user.shape[0]
    u = model.user_embedding[user]
    entities, relations = [item.view(-1, 1)], []
    for hop in range(depth):
        entities.append(model.adj_entity[entities[hop]].long().view(batch_size, -1))
        relations.append(model.adj_relation[entities[hop]].long().view(batch_size, -1))
    vectors = [model.entity_embedding[e] for e in entities]
    relation_vectors = [model.relation_embedding[r] for r in relations]
    weights = []
    for i in range(depth):
        weight, bias = model.aggregator_weights[i], model.aggregator_biases[i]
        act = torch.tanh if i == depth - 1 else torch.relu
        next_vectors = []
        for hop in range(depth - i):
            neighbors = vectors[hop + 1].view(batch_size, -1, k, d)
            rel = relation_vectors[hop].view(batch_size, -1, k, d)
            scores = (u.view(batch_size, 1, 1, d) * rel).mean(-1)  # mean over dims
            w = torch.softmax(scores, -1)
            if i == 0:
                weights.append(w)
            aggregated = (w.unsqueeze(-1) * neighbors).mean(2)  # mean over K
            self_vectors = vectors[hop]
            if model.aggregator == "sum":
                x = self_vectors + aggregated
            elif model.aggregator == "concat":
                x = torch.cat([self_vectors, aggregated], -1)
            else:
                x = aggregated
            next_vectors.append(act(x @ weight.t() + bias))
        vectors = next_vectors
    return u, vectors[0].view(batch_size, d), weights


def kgcn_logits_ref(model: KGCN, user, item):
    u, v, _ = kgcn_encode_ref(model, user, item)
    return (u * v).sum(-1)


def kgcn_l2_ref(model: KGCN):
    tables = [model.user_embedding, model.entity_embedding, model.relation_embedding, *model.aggregator_weights]
    return sum((t * t).sum() / 2 for t in tables)


def kgnn_ls_loss_ref(model: KGNNLS, user, item, label):
    """BCE + l2 + ls_weight * LS-BCE with a Python dict label table and explicit loops."""
    table = {}
    keys, values = model.label_keys.long().tolist(), model.label_values.tolist()
    for key, value in zip(keys, values):
        table[divmod(key, model.num_entities)] = float(value)
    u, v, weights = kgcn_encode_ref(model, user, item)
    batch_size, k, depth = user.shape[0], model.num_neighbors, model.num_layers
    entities = [item.view(-1, 1)]
    for hop in range(depth):
        entities.append(model.adj_entity[entities[hop]].long().view(batch_size, -1))
    predicted = []
    for b in range(batch_size):
        ub, vb = int(user[b]), int(item[b])
        initial, reset = [], []
        for hop_entities in entities:
            row_init, row_reset = [], []
            for e in hop_entities[b].tolist():
                known = table.get((ub, e), 0.5)
                held_out = e == vb
                row_init.append(0.5 if held_out else known)
                row_reset.append((not held_out) and known != 0.5)
            initial.append(torch.tensor(row_init, dtype=u.dtype))
            reset.append(row_reset)
        labels = initial
        for i in range(depth):
            next_labels = []
            for hop in range(depth - i):
                w = weights[hop][b]  # (n, K)
                mixed = (w * labels[hop + 1].view(-1, k)).mean(-1)
                out = torch.stack([initial[hop][j] if reset[hop][j] else mixed[j] for j in range(mixed.shape[0])])
                next_labels.append(out)
            labels = next_labels
        predicted.append(labels[0][0])
    predicted = torch.stack(predicted)
    logits = (u * v).sum(-1)
    return (
        F.binary_cross_entropy_with_logits(logits, label)
        + model.l2_weight * kgcn_l2_ref(model)
        + model.ls_weight * F.binary_cross_entropy_with_logits(predicted, label)
    )


def ripplenet_loss_ref(model: RippleNet, user, item, label):
    """(logits, loss) with (B, M, d, d) relation gathers, as the TF code."""
    relation = model.relation_matrix.transpose(1, 2)  # R_r (the model stores R_r^T)
    v = model.entity_embedding[item]
    responses, kge, l2 = [], 0.0, 0.0
    for hop in range(model.num_hops):
        h = model.entity_embedding[model.memories_h[user, hop].long()]  # (B, M, d)
        r = relation[model.memories_r[user, hop].long()]  # (B, M, d, d)
        t = model.entity_embedding[model.memories_t[user, hop].long()]
        rh = (r @ h.unsqueeze(-1)).squeeze(-1)  # (B, M, d)
        probs = torch.softmax((rh * v.unsqueeze(1)).sum(-1), -1)
        o = (probs.unsqueeze(-1) * t).sum(1)
        v = (v + o) @ model.transform_weight.t()
        responses.append(o)
        hrt = (h.unsqueeze(-2) @ r @ t.unsqueeze(-1)).view(h.shape[:2])
        kge = kge + torch.sigmoid(hrt).mean()
        l2 = l2 + (h * h).sum() + (t * t).sum() + (r * r).sum()
    logits = (v * sum(responses)).sum(-1)
    loss = F.binary_cross_entropy_with_logits(logits, label) - model.kge_weight * kge + model.l2_weight * l2
    return logits, loss


def ckan_logits_ref(model: CKAN, user, item):
    """The original CKAN forward (pre-sigmoid)."""
    E, R = model.entity_embedding, model.relation_embedding
    w1, w2, w3 = model.attention_weights

    def attention(h, r, t):
        x = torch.cat([E[h], R[r]], -1)
        pi = torch.sigmoid(torch.relu(torch.relu(x @ w1.t()) @ w2.t()) @ w3.t()).squeeze(-1)
        return (torch.softmax(pi, -1).unsqueeze(-1) * E[t]).sum(1)

    uh, ur, ut = (getattr(model, f"user_{n}")[user].long() for n in ("heads", "relations", "tails"))
    ih, ir, it = (getattr(model, f"item_{n}")[item].long() for n in ("heads", "relations", "tails"))
    users = [E[uh[:, 0]].mean(1)] + [attention(uh[:, l], ur[:, l], ut[:, l]) for l in range(model.num_layers)]
    items = [E[item]] + [attention(ih[:, l], ir[:, l], it[:, l]) for l in range(model.num_layers)]
    if model.aggregator != "concat":
        items.append(E[ih[:, 0]].mean(1))
    if model.aggregator == "concat":
        eu, ev = torch.cat(users[::-1], -1), torch.cat(items[::-1], -1)
    elif model.aggregator == "sum":
        eu, ev = sum(users), sum(items)
    else:
        eu, ev = torch.stack(users).amax(0), torch.stack(items).amax(0)
    return (eu * ev).sum(-1)
