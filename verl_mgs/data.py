"""``MixtureDataset``: verl's ``RLHFDataset`` reordered so every train batch holds fixed domain proportions.

In a recipe (or with ``+`` on the command line)::

    data:
      custom_cls: {path: pkg://verl_mgs.data, name: MixtureDataset}
      shuffle: false                 # the order is the mixture; a random sampler would undo it
      mixture:
        proportions: {math: 0.5, chat: 0.5}
        domain_key: data_source      # or a dotted path into a dict column: extra_info.domain
        seed: 0
        stopping: cycle              # or first_exhausted (no row repeats)

The rows of all ``train_files`` are read and filtered by verl, then laid out with
:func:`mgs.plan_mixture`: every block of ``data.gen_batch_size`` (else ``data.train_batch_size``)
prompts holds the same per-domain counts (largest remainder), in a seeded order. verl's sequential
sampler then reads one block per step. The layout is rebuilt from the files and the seed whenever verl
re-reads them (a resumed run continues it exactly). Validation files are left as they are.

**Curricula** (sequential training, a final refresh): ``data.mixture.curriculum`` lays the train rows out in phases
with :func:`mgs.plan_curriculum` instead (the domains are still those of ``proportions``, which then only list them)::

      mixture:
        proportions: {math: 0.5, chat: 0.5}
        curriculum: {order: [math, chat], num_batches: 200, refresh_fraction: 0.1}   # mgs.sequential_phases
        # or explicit phases: [{proportions: {math: 1.0}, num_batches: 100}, {proportions: {chat: 1.0}, ...}]

The dataset then has exactly ``num_batches × batch size`` rows: with ``trainer.total_epochs=1`` each train step
reads one batch of the curriculum, in order (``recipes/verl/sequential_*.yaml``). A resumed run re-reads the same
layout and verl's sampler skips the batches already trained.

What the proportions survive: the rollout repeats each prompt ``rollout.n`` times, so a train batch
keeps them. Filtered prompts (``filter_overlong_prompts``) are dropped before planning. What breaks them:
``data.shuffle=true`` (refused), ``trainer.balance_batch=true`` (verl's default; it regroups rows across
DP ranks by length, so each *rank* sees other proportions while the *batch* keeps them: surgery does not
care, it reduces every domain over all ranks), and dynamic sampling that drops groups after rollout.
"""

from __future__ import annotations

from verl.utils.dataset.rl_dataset import RLHFDataset

from mgs import plan_curriculum, plan_mixture, sequential_phases
from mgs.integration import DomainIndex
from verl_mgs import _upstream

_upstream.check()


class MixtureDataset(RLHFDataset):
    """``RLHFDataset`` whose rows are laid out by :func:`mgs.plan_mixture` (settings in ``data.mixture``)."""

    def _read_files_and_tokenize(self):
        super()._read_files_and_tokenize()
        if self._is_validation():
            return
        mixture = self.config.get("mixture")
        if mixture is None or not mixture.get("proportions"):
            raise ValueError("data.custom_cls=verl_mgs.data.MixtureDataset needs data.mixture.proportions, e.g. "
                             "+data.mixture.proportions='{math: 0.5, chat: 0.5}'.")
        if self.config.get("shuffle", True):
            raise ValueError("MixtureDataset lays out each train batch's domains in order; data.shuffle=true would "
                             "draw rows at random and undo it. Set data.shuffle=false (the mixture is seeded).")
        _upstream.check_built(self, _upstream.DATASET_ATTRIBUTES)
        proportions = {str(d): float(p) for d, p in dict(mixture["proportions"]).items()}
        index = DomainIndex(mixture.get("domain_key", "data_source"), sorted(proportions),
                            key_setting="data.mixture.domain_key", domains_setting="data.mixture.proportions")
        if index.field not in self.dataframe.column_names:
            raise index.missing_field(self.dataframe.column_names)
        by_domain: dict[str, list[int]] = {d: [] for d in proportions}
        for i, domain in enumerate(index.ids(index.of_values(self.dataframe[index.field]))):
            by_domain[index.domains[domain]].append(i)
        batch_size = self.config.get("gen_batch_size") or self.config.train_batch_size
        sizes = {d: len(rows) for d, rows in by_domain.items()}
        seed, stopping = int(mixture.get("seed", 0)), str(mixture.get("stopping", "cycle"))
        curriculum = mixture.get("curriculum")
        if curriculum:
            plan = plan_curriculum(sizes, _phases(curriculum), int(batch_size), seed=seed, stopping=stopping)
        else:
            plan = plan_mixture(sizes, proportions, int(batch_size), seed=seed, stopping=stopping)
        self.mixture_plan = plan
        self.dataframe = self.dataframe.select([by_domain[d][i] for d, i in plan.rows()])

    def _is_validation(self) -> bool:
        val_files = self.config.get("val_files")
        if val_files is None:
            return False
        val_files = [val_files] if isinstance(val_files, str) else list(val_files)
        return list(self.original_data_files) == val_files and val_files != self._train_files()

    def _train_files(self) -> list:
        train = self.config.get("train_files")
        return [train] if isinstance(train, str) else list(train or [])


def _phases(curriculum) -> list:
    """``data.mixture.curriculum`` as :func:`mgs.plan_curriculum` phases: a mapping ``{order, num_batches,
    refresh_fraction}`` (:func:`mgs.sequential_phases`) or a list of ``{proportions, num_batches, name}``."""
    if hasattr(curriculum, "keys"):
        unknown = sorted(set(curriculum.keys()) - {"order", "num_batches", "refresh_fraction"})
        if unknown or "order" not in curriculum or "num_batches" not in curriculum:
            raise ValueError("data.mixture.curriculum as a mapping takes order, num_batches and refresh_fraction, e.g. "
                             f"{{order: [math, chat], num_batches: 200}}; got keys {sorted(curriculum.keys())}.")
        return sequential_phases([str(d) for d in curriculum["order"]], int(curriculum["num_batches"]),
                                 refresh_fraction=float(curriculum.get("refresh_fraction", 0.0)))
    return [{"proportions": {str(d): float(p) for d, p in dict(phase["proportions"]).items()},
             "num_batches": int(phase["num_batches"]), "name": str(phase.get("name", ""))} for phase in curriculum]
