"""The paper's character LSTM for Shakespeare (McMahan et al. 2017, section 3).

An 8-dimensional character embedding, two LSTM layers of 256 units and a
softmax over the characters, predicting the next character at every one of
the 80 positions a sequence is unrolled over. With V characters it has
798,720 + 265·V parameters in torch (an LSTM layer has two bias vectors);
the paper reports 866,578 for its vocabulary (docs/results.md compares).
"""
from __future__ import annotations

from torch import nn


class CharLSTM(nn.Module):
    def __init__(self, vocabulary: int, embedding: int = 8, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, embedding)
        self.lstm = nn.LSTM(embedding, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, vocabulary)

    def forward(self, tokens):
        return self.out(self.lstm(self.embed(tokens))[0])


def lstm(input_shape, num_classes: int) -> nn.Module:
    """input_shape (T,): token sequences; num_classes: the vocabulary size."""
    if len(input_shape) != 1:
        raise ValueError(f"the lstm reads token sequences (a federation of kind 'sequence'), not inputs of shape "
                         f"{list(input_shape)}")
    return CharLSTM(num_classes)
