"""Demo backbones: the language-model pretraining (a `transformers.Trainer` run) is seeded and learns."""

import torch

from dreamprm_trl.scripts.demo_backbones import pretrain_causal_lm, tiny_causal_backbone, train_bytelevel_tokenizer

TEXTS = [f"def f{i}(x):\n    return x + {i}\n" for i in range(32)]


def _pretrained(seed: int):
    tokenizer = train_bytelevel_tokenizer(TEXTS, vocab_size=300)
    body, tokenizer = tiny_causal_backbone(tokenizer, hidden_size=32, seed=0)
    before = body.get_input_embeddings().weight.detach().clone()
    losses = pretrain_causal_lm(body, tokenizer, TEXTS, epochs=2, batch_size=8, max_length=64, seed=seed,
                                progress=False)
    return body, before, losses


def test_pretraining_is_seeded_learns_and_trains_the_body_in_place():
    body, before, losses = _pretrained(seed=0)
    again, _, losses_again = _pretrained(seed=0)
    assert len(losses) == 2 and losses == losses_again
    assert losses[0] > losses[1]  # next-token loss falls on a tiny, regular corpus
    assert all(torch.equal(a, b) for a, b in zip(body.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(body.get_input_embeddings().weight, before)  # the tied embeddings were trained
    assert not body.training and body.device.type == "cpu"
    _, _, other = _pretrained(seed=1)
    assert other != losses  # the seed drives the data order
