"""The machinery of a training run, each piece testable alone; train_simple.py is the run's science.

    settings      flags, their checks, and one RunSpec per requested run
    decide        train, resume, skip or refuse, from an existing log and checkpoint
    lock          one writer per run
    signals       SIGINT/SIGTERM: finish the step, checkpoint, exit
    checkpoint    the full checkpoint while a run is unfinished, the final weights once it completes
    distributed   DDP plumbing
    machine       device, loss kernel, allocator, CPU facts, git state
    watch         progress bars, status lines, TensorBoard
    export        --export_hf: a Hugging Face GPT-2 of a complete run
"""
