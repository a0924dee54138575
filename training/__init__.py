"""The machinery of a training run, each piece testable alone; train_simple.py is the run's science.

    flags         every flag, a typed dataclass field: the settings that change a result, and the rest
    settings      the parser built from them, their checks, and one RunSpec per requested run
    data          the splits tokenized, their n-gram models, the subsets evaluated during training
    state         the training state: fresh, checkpointed, restored, reduced to final weights
    schedule      data order, run length, learning rate, when to evaluate
    evaluation    the pass over a split (metrics.py's sums), the selection and report splits at each
                  evaluation, the best point, text samples
    decide        train, resume, skip or refuse, from an existing log and checkpoint
    lock          one writer per run
    signals       SIGINT/SIGTERM: finish the step, checkpoint, exit (a study or search: its runs too)
    checkpoint    the full checkpoint while a run is unfinished, the final weights once it completes
    distributed   DDP plumbing
    machine       device, loss kernel, allocator, CPU facts, git state
    watch         progress bars, status lines, TensorBoard
    export        --export_hf: a Hugging Face GPT-2 of a complete run
    backfill_ngrams   the n-gram models of logs written before runs recorded them
"""
