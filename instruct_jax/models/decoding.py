"""Autoregressive decoding: greedy, temperature / top-k / top-p sampling and beam search.

The search loops here know nothing about networks. A model describes itself
through four things (see `_decoding_setup` of instruct_jax.models.encoder_decoder and
instruct_jax.models.decoder_only, called by api.Model.predict_batch):

  first_logits  [batch, vocab] float32: the distribution of the first new token
                (after the BOS token, or after a decoder-only prompt);
  state         any pytree whose leaves are batch-major ([batch, ...]) and
                change as rows grow, e.g. a KV cache;
  context       any pytree of batch-major leaves that every step reads but none
                changes, e.g. the encoder's cross-attention keys/values and
                padding (or None);
  step_fn       (tokens [n], state, context) -> (logits [n, vocab], state):
                appends one token per row and returns the next distribution.

Because every leaf is batch-major, beam search can widen the batch to
batch * num_beams rows. It repeats the context once per beam up front, and
reorders only the state's rows (one gather per step), since all beams of a row
share its context. Everything is written with jax.lax.while_loop and static
shapes, so a whole decode jit-compiles and runs under a device mesh (rows
sharded over the data axis like training batches).

Outputs: tokens [batch, max_length] int32 without BOS, EOS included, 0 after
EOS; and one float32 score per row (see `decode`).
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jax.Array
State = Any
Context = Any
StepFn = Callable[[Array, State, Context], tuple[Array, State]]

METHODS = ("greedy", "sample", "beam")
# Log-probability of impossible beams; finite so that sums never give inf - inf.
_NEG = -1.0e9


class DecodingSetup(NamedTuple):
  """A model's side of decoding a batch (a family's `_decoding_setup` returns it).

  max_length: new tokens at most; limits: None or [batch] int32 caps per row.
  The rest is described in the module docstring.
  """
  first_logits: Array
  state: State
  step_fn: StepFn
  max_length: int
  limits: Optional[Array] = None
  context: Context = None


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How to decode.

  method: "greedy", "sample" (temperature with optional top-k / top-p) or
    "beam" (num_beams beams, t5x/brevity length penalty ((5 + len) / 6)^alpha).
  max_decode_length: new tokens to generate at most; None means the length of
    the batch's decoder_target_tokens (the task's "targets" feature length).
  use_cache: False recomputes the whole prefix every step (slow; for checks
    and benchmarks of the KV cache).
  eos_id: the token that ends a row; None (default) takes the model's output
    vocabulary's (T5: 1, Llama / Mistral SentencePiece: 2), see for_vocabulary.
  """
  method: str = "greedy"
  max_decode_length: Optional[int] = None
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  num_beams: int = 4
  alpha: float = 0.6
  eos_id: Optional[int] = None
  use_cache: bool = True

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"DecodeConfig.method={self.method!r}; expected one of {METHODS}.")
    if self.max_decode_length is not None and self.max_decode_length < 1:
      raise ValueError(f"DecodeConfig.max_decode_length={self.max_decode_length} must be "
                       "positive, or None to use the targets length of the batch.")
    if self.temperature <= 0:
      raise ValueError(f"DecodeConfig.temperature={self.temperature} must be > 0; use "
                       "method='greedy' for argmax decoding.")
    if self.top_k < 0:
      raise ValueError(f"DecodeConfig.top_k={self.top_k} must be >= 0 (0 disables it).")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"DecodeConfig.top_p={self.top_p} must be in (0, 1] (1 disables it).")
    if self.num_beams < 1:
      raise ValueError(f"DecodeConfig.num_beams={self.num_beams} must be >= 1.")
    if self.alpha < 0:
      raise ValueError(f"DecodeConfig.alpha={self.alpha} must be >= 0 (0 disables the "
                       "length penalty).")

  def for_vocabulary(self, vocabulary: Any) -> "DecodeConfig":
    """This config with eos_id taken from `vocabulary` unless it was set explicitly."""
    if self.eos_id is not None:
      return self
    if vocabulary.eos_id is None:
      raise ValueError(f"The model's output vocabulary ({type(vocabulary).__name__}) has no EOS "
                       "id, so decoding cannot tell where a row ends; give the vocabulary one "
                       "or set it, e.g. --gin.decoding.DecodeConfig.eos_id=1.")
    return dataclasses.replace(self, eos_id=vocabulary.eos_id)


def brevity_penalty(alpha: float, length: Array) -> Array:
  """The GNMT / t5x length penalty ((5 + length) / 6) ** alpha that divides beam scores."""
  return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


def filter_logits(logits: Array, top_k: int = 0, top_p: float = 1.0) -> Array:
  """Logits with every token outside the top-k / nucleus (top-p) set to -inf.

  The most likely token always survives, so a row is never fully masked.
  """
  if top_k and top_k < logits.shape[-1]:
    kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # The smallest logit still inside the nucleus is the cut-off.
    cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_logits, jnp.inf), axis=-1,
                     keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def _tiles(x: Array, block: int, blocks: int) -> Array:
  """x's last axis padded with -inf to `blocks` x `block` and split: [..., blocks, block]."""
  padding = [(0, 0)] * (x.ndim - 1) + [(0, blocks * block - x.shape[-1])]
  return jnp.pad(x, padding, constant_values=-jnp.inf).reshape(*x.shape[:-1], blocks, block)


def blocked_top_k(x: Array, k: int, block: int = 128) -> tuple[Array, Array]:
  """jax.lax.top_k(x, k) over the last axis, without scanning every element in TopK.

  XLA:CPU's TopK visits each element in scalar code, which over beam search's
  num_beams * vocab candidates costs more than the rest of choosing the beams.
  Here a vectorised max over blocks of `block` consecutive elements finds the k
  blocks with the largest maxima (ties: lower block first); lax.top_k then runs
  only over those blocks' elements, kept in index order. The result is
  lax.top_k's exactly, ties (lower index first) included: an element outside
  those blocks is at most the k-th largest block maximum, and every chosen
  block holds an element that ranks before it. That argument needs each block
  maximum to be the block's largest element in lax.top_k's total order, which a
  float max need not give for NaN or signed zeros, so when any block maximum is
  NaN or zero, lax.top_k runs over all of x instead.
  """
  n, lead = x.shape[-1], x.shape[:-1]
  blocks = -(-n // block)
  if blocks <= k:
    return jax.lax.top_k(x, k)
  tiles = _tiles(x, block, blocks)
  maxima = jnp.max(tiles, axis=-1)

  def by_blocks(tiles):
    _, best = jax.lax.top_k(maxima, k)
    best = jnp.sort(best, axis=-1)
    chosen = jnp.take_along_axis(tiles, best[..., None], axis=-2).reshape(*lead, k * block)
    values, where = jax.lax.top_k(chosen, k)
    return values, jnp.take_along_axis(best, where // block, axis=-1) * block + where % block

  def everywhere(tiles):
    return tuple(jax.lax.top_k(tiles.reshape(*lead, blocks * block)[..., :n], k))

  exact = jnp.logical_not(jnp.any(jnp.isnan(maxima) | (maxima == 0)))
  return jax.lax.cond(exact, by_blocks, everywhere, tiles)


def blocked_argmax(x: Array, block: int = 128) -> Array:
  """jnp.argmax(x, axis=-1) (the first maximum; the first NaN if any), by blocks.

  XLA:CPU runs argmax as a (value, index) reduction in scalar code: over T5's
  32k vocabulary, five times as long as a vectorised max over blocks of `block`
  elements, an argmax over those block maxima and one within the chosen block.
  Same index: the first maximum lies in the first block whose maximum equals
  the row's. A float max need not propagate NaN, so when the sum of x (which
  does; inf - inf also makes it NaN) is NaN, jnp.argmax runs over all of x.
  """
  n, lead = x.shape[-1], x.shape[:-1]
  blocks = -(-n // block)
  if blocks <= 1:
    return jnp.argmax(x, axis=-1)
  tiles = _tiles(x, block, blocks)

  def by_blocks(tiles):
    best = jnp.argmax(jnp.max(tiles, axis=-1), axis=-1)
    chosen = jnp.take_along_axis(tiles, best[..., None, None], axis=-2)[..., 0, :]
    return best * block + jnp.argmax(chosen, axis=-1)

  def everywhere(tiles):
    return jnp.argmax(tiles.reshape(*lead, blocks * block)[..., :n], axis=-1)

  return jax.lax.cond(jnp.isnan(jnp.sum(x)), everywhere, by_blocks, tiles)


def _log_prob_of(logits: Array, token: Array) -> Array:
  """log_softmax(logits)[token] per row, without writing the whole log_softmax."""
  shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  log_normalizer = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))
  return jnp.take_along_axis(shifted, token[:, None], axis=-1)[:, 0] - log_normalizer


def _row_limits(limits: Optional[Array], batch: int, max_length: int) -> Array:
  if limits is None:
    return jnp.full((batch,), max_length, jnp.int32)
  return jnp.minimum(jnp.asarray(limits, jnp.int32), max_length)


def _set_column(buffer: Array, index: Array, values: Array) -> Array:
  """buffer[..., index] = values, as a select (shards cleanly, no scatter)."""
  column = jnp.arange(buffer.shape[-1], dtype=jnp.int32) == index
  return jnp.where(column, values[..., None], buffer)


def sample_decode(first_logits: Array, state: State, step_fn: StepFn, *, max_length: int,
                  cfg: DecodeConfig, limits: Optional[Array] = None,
                  rng: Optional[Array] = None, context: Context = None
                  ) -> tuple[Array, Array]:
  """Greedy (cfg.method == "greedy") or sampled decoding of every row.

  Row i stops after EOS or after limits[i] tokens. Scores are the summed
  log-probabilities of the emitted tokens under the model (no temperature or
  filtering applied to the score).
  """
  batch = first_logits.shape[0]
  limits = _row_limits(limits, batch, max_length)
  greedy = cfg.method == "greedy"
  if not greedy and rng is None:
    raise ValueError("Sampling needs an rng (jax.random.PRNGKey); pass rng=... to "
                     "predict_batch, or use method='greedy'.")
  if rng is None:
    rng = jax.random.PRNGKey(0)

  def cond(carry):
    i, _, done, _, _, _ = carry
    return jnp.logical_and(i < max_length, jnp.logical_not(jnp.all(done)))

  def body(carry):
    i, tokens, done, scores, logits, state = carry
    logits = logits.astype(jnp.float32)
    if greedy:
      token = blocked_argmax(logits).astype(jnp.int32)
    else:
      filtered = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
      token = jax.random.categorical(jax.random.fold_in(rng, i), filtered).astype(jnp.int32)
    token = jnp.where(done, 0, token)
    scores = scores + jnp.where(done, 0.0, _log_prob_of(logits, token))
    tokens = _set_column(tokens, i, token)
    done = done | (token == cfg.eos_id) | (i + 1 >= limits)
    logits, state = step_fn(token, state, context)
    return i + 1, tokens, done, scores, logits, state

  carry = (jnp.zeros((), jnp.int32), jnp.zeros((batch, max_length), jnp.int32),
           limits <= 0, jnp.zeros((batch,), jnp.float32), first_logits, state)
  _, tokens, _, scores, _, _ = jax.lax.while_loop(cond, body, carry)
  return tokens, scores


def expand_rows(tree: State, times: int) -> State:
  """Repeats every batch-major leaf `times` times in place: row b -> rows b*times ... ."""
  return jax.tree.map(lambda x: jnp.repeat(x, times, axis=0), tree)


def beam_search(first_logits: Array, state: State, step_fn: StepFn, *, max_length: int,
                cfg: DecodeConfig, limits: Optional[Array] = None,
                context: Context = None) -> tuple[Array, Array]:
  """Beam search with cfg.num_beams beams and the brevity length penalty.

  Each step ranks 2 * num_beams continuations of the live beams. Continuations
  that end (EOS, or the row's length limit) become finished hypotheses only if
  they rank among the best num_beams, scored log_prob / brevity_penalty(len);
  the best num_beams that do not end stay alive. A row stops when no live beam
  can still beat its worst kept finished hypothesis. With one beam and
  alpha=0 this is exactly greedy decoding.

  Returns the best finished hypothesis per row and its (penalised) score.
  """
  batch, vocab = first_logits.shape
  beams = cfg.num_beams
  limits = _row_limits(limits, batch, max_length)
  num_candidates = min(2 * beams, beams * vocab)
  # Beam 0 starts alone so the first step picks `beams` distinct tokens.
  alive_log_probs = jnp.tile(jnp.asarray([0.0] + [_NEG] * (beams - 1), jnp.float32),
                             (batch, 1))
  carry = dict(
      i=jnp.zeros((), jnp.int32),
      alive_seq=jnp.zeros((batch, beams, max_length), jnp.int32),
      alive_log_probs=alive_log_probs,
      finished_seq=jnp.zeros((batch, beams, max_length), jnp.int32),
      finished_scores=jnp.full((batch, beams), _NEG, jnp.float32),
      logits=expand_rows(first_logits, beams),
      state=expand_rows(state, beams),
  )
  # All beams of a row share its context: repeated once here, never reordered.
  context = expand_rows(context, beams)
  best_possible_penalty = brevity_penalty(cfg.alpha, limits)

  def row_done(c):
    # Log-probs only fall as sequences grow, and the penalty is largest at the
    # row's length limit, so this bounds every live beam's final score.
    best_alive = c["alive_log_probs"][:, 0] / best_possible_penalty
    worst_finished = c["finished_scores"][:, -1]
    no_alive = c["alive_log_probs"][:, 0] <= _NEG / 2
    return jnp.logical_or(no_alive, worst_finished >= best_alive)

  def cond(c):
    return jnp.logical_and(c["i"] < max_length, jnp.logical_not(jnp.all(row_done(c))))

  def body(c):
    i = c["i"]
    log_probs = jax.nn.log_softmax(c["logits"].astype(jnp.float32), axis=-1)
    candidates = (c["alive_log_probs"][:, :, None]
                  + log_probs.reshape(batch, beams, vocab)).reshape(batch, beams * vocab)
    top_log_probs, top_index = blocked_top_k(candidates, num_candidates)
    origin = top_index // vocab
    token = (top_index % vocab).astype(jnp.int32)
    seq = jnp.take_along_axis(c["alive_seq"], origin[:, :, None], axis=1)
    seq = _set_column(seq, i, token)

    length = i + 1
    ends = (token == cfg.eos_id) | (length >= limits[:, None])
    valid = top_log_probs > _NEG / 2
    rank_ok = jnp.arange(num_candidates) < beams
    new_finished = jnp.where(ends & valid & rank_ok,
                             top_log_probs / brevity_penalty(cfg.alpha, length), _NEG)
    all_scores = jnp.concatenate([c["finished_scores"], new_finished], axis=1)
    all_seq = jnp.concatenate([c["finished_seq"], seq], axis=1)
    finished_scores, keep = jax.lax.top_k(all_scores, beams)
    finished_seq = jnp.take_along_axis(all_seq, keep[:, :, None], axis=1)

    alive_candidates = jnp.where(ends, _NEG, top_log_probs)
    alive_log_probs, keep = jax.lax.top_k(alive_candidates, beams)
    alive_seq = jnp.take_along_axis(seq, keep[:, :, None], axis=1)
    alive_origin = jnp.take_along_axis(origin, keep, axis=1)
    alive_token = jnp.take_along_axis(token, keep, axis=1)

    rows = (jnp.arange(batch, dtype=jnp.int32)[:, None] * beams + alive_origin).reshape(-1)
    state = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), c["state"])
    logits, state = step_fn(alive_token.reshape(-1), state, context)
    return dict(i=length, alive_seq=alive_seq, alive_log_probs=alive_log_probs,
                finished_seq=finished_seq, finished_scores=finished_scores,
                logits=logits, state=state)

  c = jax.lax.while_loop(cond, body, carry)
  # Rows that never finished (only if the loop ran out first) fall back to the live beam.
  has_finished = c["finished_scores"][:, 0] > _NEG / 2
  fallback_scores = c["alive_log_probs"][:, 0] / brevity_penalty(cfg.alpha, c["i"])
  tokens = jnp.where(has_finished[:, None], c["finished_seq"][:, 0], c["alive_seq"][:, 0])
  scores = jnp.where(has_finished, c["finished_scores"][:, 0], fallback_scores)
  return tokens, scores


def decode(first_logits: Array, state: State, step_fn: StepFn, *, max_length: int,
           cfg: DecodeConfig, limits: Optional[Array] = None,
           rng: Optional[Array] = None, context: Context = None) -> tuple[Array, Array]:
  """Runs the configured search; (tokens [batch, max_length], scores [batch]).

  Scores: summed token log-probabilities for greedy and sampling; the
  length-penalised beam score (log_prob / brevity_penalty) for beam search.
  `limits` [batch] caps each row's number of new tokens (default max_length).
  """
  if cfg.eos_id is None:
    raise ValueError("DecodeConfig.eos_id is None; resolve it with "
                     "cfg.for_vocabulary(model.output_vocabulary) before decoding.")
  if cfg.method == "beam":
    return beam_search(first_logits, state, step_fn, max_length=max_length, cfg=cfg,
                       limits=limits, context=context)
  return sample_decode(first_logits, state, step_fn, max_length=max_length, cfg=cfg,
                       limits=limits, rng=rng, context=context)
