"""The shared core below every other package, in pure Python (no torch): the benchmark suites (the ``*.toml``
files of this folder) and every format the project reads and writes, with one validator each; the spec grammar;
the registry machinery and the registries of defenses, attacks, models and datasets; the user-error type; atomic,
verified file I/O.

* :mod:`.errors` -- :class:`UsageError`, the one type of bad-input errors (exit code 2);
* :mod:`.spec` -- spec strings (``randbet:p=0.02``), :class:`SpecError`, canonical rates;
* :mod:`.registry`, :mod:`.registries` -- the timm-style registry and the defense/attack/model/dataset registries;
* :mod:`.suite` -- the suite format (:class:`Suite`, :func:`load_suite`);
* :mod:`.record` -- the result record (:class:`ResultRecord`);
* :mod:`.entry` -- the leaderboard entry format (:func:`validate_entry`);
* :mod:`.fileio` -- atomic writes, content digests, writable-folder checks;
* :mod:`.lock` -- per-artefact file locks (concurrent identical runs compute an artefact once).
"""
