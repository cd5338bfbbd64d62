"""mmlab refine: successive halving over a searched front, stored with the study, shared and resumable.

First, the piece of training it needs: train() resumes from given weights and hands back its own.
"""

import pytest
import torch

from mmlab.model import build
from mmlab.signals.score import ScoreSettings, adapt
from mmlab.signals.train import train
from mmlab.spec import get_preset

DATA = "synthetic:n=48,classes=3"


@pytest.fixture(autouse=True)
def _one_thread():
    """Two shared cores: one torch thread trains these tiny networks fastest."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_train_hands_back_its_state_and_resumes_from_it():
    adapted, ds = adapt(get_preset("tiny"), ScoreSettings(data=DATA))
    first = train(adapted, ds.train, ds.val, epochs=1, batch_size=16, num_classes=ds.num_classes)
    assert first.state is not None and set(first.state) == set(build(adapted).state_dict())
    # The state is the network that was evaluated: loaded into a fresh build it scores the same.
    model = build(adapted)
    model.load_state_dict(first.state)
    model.eval()
    with torch.inference_mode():
        images = torch.stack([ds.val[i][0] for i in range(len(ds.val))])
        labels = torch.tensor([ds.val[i][1] for i in range(len(ds.val))])
        assert 100.0 * float((model(images).argmax(1) == labels).float().mean()) == pytest.approx(first.top1)
    # With lr 0 the weights stay: a resumed run scores what it started from, a fresh one does not.
    kept = train(adapted, ds.train, ds.val, epochs=1, batch_size=16, lr=0.0, init_state=first.state)
    fresh = train(adapted, ds.train, ds.val, epochs=1, batch_size=16, lr=0.0)
    assert kept.top1 == first.top1
    assert all(torch.equal(kept.state[k], first.state[k]) for k in first.state if "running" not in k and "num_batches" not in k)
    assert not all(torch.equal(fresh.state[k], first.state[k]) for k in first.state)
    with pytest.raises(ValueError, match="init_state: does not fit"):
        train(adapted.replace_stage(0, width=16), ds.train, ds.val, epochs=1, batch_size=16, init_state=first.state)
