# Training: one job per method and seed. The stage module comes from the method's `stage`.


rule train:
    input:
        config="results/{exp}/configs/train_{method}.yaml",
        data=rules.prepare_data.output.train,
        tokenizer=rules.prepare_data.output.tokenizer,
        init=init_model,
        parent=rules.tracking.output[0],
    output:
        model=directory("results/{exp}/train/{method}/seed{seed}/model"),
        metrics="results/{exp}/train/{method}/seed{seed}/metrics.json",
        history="results/{exp}/train/{method}/seed{seed}/history.jsonl",
    log:
        "results/{exp}/logs/train/{method}/seed{seed}.log",
    benchmark:
        "results/{exp}/benchmarks/train/{method}/seed{seed}.tsv"
    conda:
        "../envs/atp.yaml"
    threads: 1
    resources:
        # GPUs of the job (0: the CPU miniature). With more than one, atp.launch starts that many processes
        # through `accelerate launch` (data-parallel); set it per run or profile, e.g.
        # --set-resources train:gpu=4. Resources are no rerun trigger: changing them reruns nothing.
        gpu=0,
        # The accelerate config of a multi-GPU job: workflow/accelerate/<accelerate>.yaml (ddp; fsdp for the
        # SFT stages, refused by RL). A runtime choice, so a resource (profile: set-resources), not config.
        accelerate="ddp",
    params:
        stage=stage_module,
        code=train_code_version,
        init=init_arg,
        data_dir=subpath(input.data, parent=True),
        out_dir=subpath(output.metrics, parent=True),
        checkpoints="results/{exp}/checkpoints/{method}/seed{seed}",
    shell:
        "python -m atp.launch --gpus {resources.gpu} --accelerate {resources.accelerate}"
        " atp.stages.{params.stage} --config {input.config} --method {wildcards.method}"
        " --seed {wildcards.seed} --data-dir {params.data_dir} --out-dir {params.out_dir}"
        " --checkpoint-dir {params.checkpoints} {params.init} --threads {threads}"
        " --parent {input.parent} --rule train --wildcards 'method={wildcards.method},seed={wildcards.seed}'"
        " > {log} 2>&1"
