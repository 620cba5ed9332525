"""GRPO over latent trajectories (docs/method.md, section 6).

A trajectory is everything the policy sampled for one question: the Gaussian
latents z of the slots it reached, its stop decisions at step boundaries and its
answer tokens (temperature `temperature`, EOS included). Its log-probability is
the sum of the Gaussian log-densities of the z (summed over dimensions, or
averaged with `latent_logp: mean` as CoLaR does), the stop-decision
log-probabilities and the answer-token log-probabilities. Each of these is one
*action* of the PPO-clip loss: the log-ratio of every action is clamped to
[-clamp, clamp] before `exp`. The loss has the paper's shape (`loss: sequence`):
per trajectory, a masked mean over its latent and stop actions (the latents
weighted by `latent_weight`) plus a masked mean over its answer tokens, averaged
over the minibatch's trajectories; `loss: action` pools every action of the
minibatch into one masked mean instead.

The latent score-function term can drown the answer tokens' (a log-density summed
over d dimensions has a gradient 12-600x the answer's on the miniature), so every
`diagnostics_every` steps `gradient_diagnostics` logs the gradient norm of each
action type and the cosine between the policy gradients of two halves of the
step's groups: a cosine near 0 says the update is noise at this many trajectories.

`rollout` samples trajectories (no gradient) and records their log-probabilities
under the sampling weights; `replay` recomputes them, with gradient, under the
current weights by feeding the same z and the same stop decisions through the
same cached loop, so that before the first update the two agree.

A language model can be the policy too (`tokens`: token-level GRPO on written CoT, the machinery's positive control):
its actions are the tokens it writes, all in the "answer" term.

The package: `policy` (trajectories, rollout, replay), `tokens` (the token policy),
`loss` (advantages, PPO-clip, gradient diagnostics), `update` (the PPO updates, synchronised over processes),
`grpo` (one RL step and the task atp.train.run_loop runs). The names below are the public ones.
"""

from atp.config import RLConfig
from atp.rl.grpo import GRPOTask, bf16_first_step, check_world, freeze_decoder, grpo_step, reference_policy, rl_settings
from atp.rl.loss import LATENT_ACTIONS, gradient_diagnostics, group_advantages, ppo_clip_loss
from atp.rl.policy import Trajectories, gaussian_logp, is_token_policy, replay, rollout
from atp.rl.tokens import TokenPolicy, token_replay, token_rollout
from atp.rl.update import all_reduce_sum, ppo_update, sync_gradients

__all__ = [
    "LATENT_ACTIONS",
    "GRPOTask",
    "RLConfig",
    "TokenPolicy",
    "Trajectories",
    "all_reduce_sum",
    "bf16_first_step",
    "check_world",
    "freeze_decoder",
    "gaussian_logp",
    "gradient_diagnostics",
    "is_token_policy",
    "grpo_step",
    "group_advantages",
    "ppo_clip_loss",
    "ppo_update",
    "reference_policy",
    "replay",
    "rl_settings",
    "rollout",
    "sync_gradients",
    "token_replay",
    "token_rollout",
]
