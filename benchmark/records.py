"""Result records of a run: where each lives, the configuration hash behind it, reading a reusable one, building
and writing new ones.

A record is written atomically as each (defense, model, attack) finishes; a rerun reuses records whose
configuration hash (which includes the digest of the deployed weights and of every input file) and content digest
match; an edited or damaged record is reported and recomputed. File names are injective
(:func:`~bitbench.configs.fileio.safe_name`: a plain spec is its own name, any other a readable slug plus a digest
of the spec), so two specs never share a file and nothing is written outside the results folder.
"""

from __future__ import annotations

import datetime as _dt
import os

from bitbench.configs.fileio import JSONFileError, read_json, safe_name
from bitbench.configs.record import RecordError, ResultRecord
from bitbench.configs.suite import stable_hash

from . import __version__
from .context import RunContext, device_name, git_revision
from .deployment import DeployedModel, Deployer

__all__ = ["RecordStore"]


class RecordStore:
    """Reading, building and writing the run's result records."""

    def __init__(self, ctx: RunContext, deployer: Deployer):
        self.ctx = ctx
        self.deployer = deployer

    def path(self, dep: DeployedModel, attack_spec: str) -> str:
        """``<results>/<suite>/<model>/<defense>/<attack>/<model seed>.json`` of a deployed model."""
        return self.path_of(dep.defense.spec, dep.train_seed, attack_spec)

    def path_of(self, defense_spec: str, train_seed: int | None, attack_spec: str) -> str:
        """:meth:`path` from the canonical specs and the training seed (None: a supplied model), before any model
        is deployed."""
        sm = self.deployer.supplied
        model = safe_name(self.deployer.model_name)
        if sm is not None:  # one folder per set of weights
            model += f"-{sm.source}-{sm.weights_sha256[:12]}"
        seed = "supplied" if train_seed is None else f"seed{train_seed}"
        return os.path.join(self.ctx.opt.results_dir, safe_name(self.ctx.suite.name), model,
                            safe_name(defense_spec), safe_name(attack_spec), seed + ".json")

    def cell_hash(self, dep: DeployedModel, attack, metrics=()) -> str:
        """Hash of everything behind a record's numbers: the model key, the digest of the deployed quantized weights
        (a retrained model that differs never reuses old records), the attack with its input files by content,
        the evaluation split and data by content, the metrics measured, the code version."""
        ctx = self.ctx
        digests = ctx.input_digests("cell", attack)
        ident = {"model_key": dep.key, "weights": dep.weights_digest,
                 "attack": attack.registry_name, "attack_params": ctx.hashed_params(attack, digests, "attack"),
                 "inputs": digests, "eval_split": ctx.eval_split(),
                 "n_eval": int(ctx.dataset.test_y.shape[0]), "version": __version__,
                 "metrics": sorted(m.name for m in metrics)}
        if dep.qm.decodes:  # its stages and their parameters
            ident["protection"] = dep.qm.describe()
        return stable_hash(ident)

    def read(self, path: str, chash: str) -> ResultRecord | None:
        """The record at ``path`` if it is intact and was computed with configuration hash ``chash``. A damaged or
        edited one is reported and not used (the caller recomputes and replaces it)."""
        if not os.path.exists(path):
            return None
        try:
            rec = ResultRecord.from_json(read_json(path))
        except (JSONFileError, RecordError, RecursionError) as e:  # RecursionError: a hostile, deeply nested file
            why = (f"{e.field}: {e.reason}" if isinstance(e, RecordError) else e.reason
                   if isinstance(e, JSONFileError) else "nested too deeply to be a record")
            if isinstance(e, RecordError) and e.field == "format":
                self.ctx.log(f"result record {path} is of another format ({why}): recomputing it")
            else:
                self.ctx.warn(f"result record {path} is not used: {why}; it is recomputed now and replaced (rerun "
                              "with --rerun or delete the file to do so on purpose)")
            return None
        if rec.config_hash != chash:
            return None
        rec.cached, rec.path = True, path
        return rec

    def build(self, dep: DeployedModel, attack, ev, chash: str, total_s: float, metrics=()) -> ResultRecord:
        """The record of an evaluation (:class:`~bitbench.evaluate.AttackEvaluation`)."""
        ctx = self.ctx
        ds = ctx.dataset
        d = dep.defense
        rate = getattr(attack, "rate", None)
        sm = self.deployer.supplied
        protected = dep.qm.decodes
        from bitbench.configs.metrics import declaration_of

        n_examples = int(ds.test_y.numel())
        return ResultRecord(
            suite=ctx.suite.name, dataset=ctx.suite.dataset, task=ds.task.name,
            eval_split=ctx.eval_split(), eval_split_rule=ds.info.get("eval_split"), n_eval=int(ds.test_y.shape[0]),
            n_examples=n_examples if n_examples != int(ds.test_y.shape[0]) else None,
            model=self.deployer.model_name,
            model_options=dict(ctx.suite.model_options if sm is None else sm.options), n_params=int(dep.qm.n_words),
            model_source="trained" if sm is None else sm.source, checkpoint=None if sm is None else sm.checkpoint,
            checkpoint_sha256=None if sm is None else sm.checkpoint_sha256,
            weights_sha256=dep.weights_sha256,
            defense=d.spec, defense_name=d.registry_name, defense_params=dict(d.params),
            bits=int(dep.qm.bits), scheme=dep.qm.scheme.name,
            attack=attack.spec, attack_name=attack.registry_name, attack_params=dict(attack.params),
            attack_kind=getattr(attack, "kind", None), rate=None if rate is None else float(rate),
            flips=getattr(attack, "flips", None), clean_err=ev.clean_err, patterns=list(ev.patterns),
            train_seed=dep.train_seed, version=__version__, git_rev=git_revision(),
            clean_nonfinite=ev.clean_nonfinite, clean_values=dict(ev.clean_values),
            metrics={m.name: declaration_of(m) for m in metrics}, clean_baseline=attack.clean_baseline,
            config_hash=chash, inputs={**ctx.input_digests("model", d), **ctx.input_digests("cell", attack),
                                       "weights": dep.weights_digest}, device=device_name(ctx.device),
            timings={"train": dep.train_seconds, "trained_now": dep.trained_now, "attack_eval": ev.seconds,
                     "total": total_s}, recipe=self.deployer.recipe(d, dep.train_seed),
            date=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            trace=(ev.traces[0] if len(ev.traces) == 1 else ev.traces) if ev.traces else None, target=ev.target,
            memory_overhead=dep.qm.memory_overhead if protected else 0.0, decode_ms=ev.decode_ms,
            time_overhead=ev.time_overhead, protection=dep.qm.describe() if protected else None)
