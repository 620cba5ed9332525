"""The latent reasoner: one module for latent SFT, evaluation, `explain` and RL.

A question is followed by `<bot>`, then latent *slots* whose input embeddings are
computed, slot by slot, from the hidden state just before them (the multi-pass
latent loop, reusing the KV cache), then `<eot>` and the text. Variants differ in
what goes into a slot (docs/method.md, section 5):

| variant      | slot input                  | KL | step decoder | stop head | surplus slots      |
|--------------|-----------------------------|----|--------------|-----------|--------------------|
| coconut      | last hidden state           | -  | -            | -         | fixed budget       |
| simcot       | last hidden state           | -  | yes          | -         | fixed, decode answer |
| atp          | z ~ N(mu, sigma^2)          | yes| yes          | yes       | masked             |
| atp_no_vae   | mu                          | -  | yes          | yes       | masked             |
| atp_no_stop  | z ~ N(mu, sigma^2)          | yes| yes          | -         | fixed, decode EOS  |
| pause        | one trainable embedding     | -  | -            | -         | fixed budget       |

Slot columns of a batch are aligned (questions are left-padded), and each slot of
each row is ACTIVE (in the context), MASKED (computed, but attention mask 0: the
surplus slots of stop-head variants, and everything after a stop) or ABSENT
(alignment filler for a row with fewer slots). Position ids count only what is in
the context, so training and inference see the same positions.

The package, one concern a module: `layout` (the config, the slot states, where each record's slots go at
each curriculum stage), `cache` (the KV cache under gradient checkpointing), `reasoner` (the module and the
cached loop), `objective` (the latent-SFT loss), `io` (saving and loading), `reference` (the loop without
the cache, for the tests and the benchmark). The names below are the public ones.
"""

from atp.batches import IGNORE  # one definition, shared with the token objective
from atp.config import LatentConfig
from atp.latent.io import is_latent, load_latent, save_latent
from atp.latent.layout import (
    ABSENT,
    ACTIVE,
    MASKED,
    LatentRecord,
    Layout,
    encode_latent_records,
    layout,
    step_boundaries,
)
from atp.latent.objective import LatentBatch, LatentObjective, make_batch
from atp.latent.reasoner import LatentReasoner, SlotRun, answer_ids
from atp.variants import VARIANTS, Variant

__all__ = [
    "ABSENT",
    "ACTIVE",
    "IGNORE",
    "MASKED",
    "VARIANTS",
    "LatentBatch",
    "LatentConfig",
    "LatentObjective",
    "LatentReasoner",
    "LatentRecord",
    "Layout",
    "SlotRun",
    "Variant",
    "answer_ids",
    "encode_latent_records",
    "is_latent",
    "layout",
    "load_latent",
    "make_batch",
    "save_latent",
    "step_boundaries",
]
