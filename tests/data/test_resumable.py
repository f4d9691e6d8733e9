"""A data module's training generators continue their streams across a checkpoint round trip."""

from __future__ import annotations

import io

import numpy as np
import torch

from data.caption_features import CaptionDataModule
from data.conversations import ConversationDataModule, synthetic_corpus


def through_a_checkpoint(state: dict) -> dict:
    """What `load_state_dict` gets back on a resume (Lightning loads checkpoints with weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def conversation_module() -> ConversationDataModule:
    return ConversationDataModule(synthetic_corpus(num_dialogues=(20, 2, 2)), batch_size=4, seed=3)


def dialogue_order(loader) -> list[str]:
    return [i for batch in loader for i in batch["ids"]]


def test_a_resumed_conversation_module_continues_the_training_order() -> None:
    loader = conversation_module().train_dataloader()
    straight = [dialogue_order(loader) for _ in range(3)]
    assert straight[0] != straight[1] != straight[2]  # each epoch has its own order: a restart would repeat epoch 1's

    interrupted = conversation_module()
    first_epoch = dialogue_order(interrupted.train_dataloader())
    resumed = conversation_module()
    resumed.load_state_dict(through_a_checkpoint(interrupted.state_dict()))
    loader = resumed.train_dataloader()
    assert [first_epoch, dialogue_order(loader), dialogue_order(loader)] == straight


def caption_module() -> CaptionDataModule:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 5, 4)).astype(np.float32)
    mask = np.ones((12, 5), dtype=bool)
    targets = rng.uniform(size=12).astype(np.float32)
    return CaptionDataModule({"train": (features, mask, targets)}, batch_size=4, seed=1)


def caption_batches(loader) -> torch.Tensor:
    return torch.cat([means for means, _ in loader])


def test_a_resumed_caption_module_continues_order_and_caption_subsets() -> None:
    loader = caption_module().train_dataloader()
    straight = [caption_batches(loader) for _ in range(3)]
    assert not torch.equal(straight[0], straight[1])

    interrupted = caption_module()
    first_epoch = caption_batches(interrupted.train_dataloader())
    resumed = caption_module()
    resumed.load_state_dict(through_a_checkpoint(interrupted.state_dict()))
    loader = resumed.train_dataloader()
    for got, expected in zip([first_epoch, caption_batches(loader), caption_batches(loader)], straight, strict=True):
        assert torch.equal(got, expected)


def test_a_module_without_saved_states_starts_from_its_seed() -> None:
    module = conversation_module()
    module.load_state_dict({})  # a checkpoint written before the states were saved
    assert dialogue_order(module.train_dataloader()) == dialogue_order(conversation_module().train_dataloader())
