# Evaluation: one job per method and seed covers every suite (one model load, one process).


rule evaluate:
    input:
        config="results/{exp}/configs/eval_{method}.yaml",
        model=eval_model,
        suites=rules.prepare_data.output.suites,
        parent=rules.tracking.output[0],
    output:
        metrics=expand("results/{{exp}}/eval/{{method}}/seed{{seed}}/{suite}/metrics.json", suite=SUITES),
        predictions=expand("results/{{exp}}/eval/{{method}}/seed{{seed}}/{suite}/predictions.jsonl", suite=SUITES),
    log:
        "results/{exp}/logs/evaluate/{method}/seed{seed}.log",
    benchmark:
        "results/{exp}/benchmarks/evaluate/{method}/seed{seed}.tsv"
    conda:
        "../envs/atp.yaml"
    threads: 1
    resources:
        gpu=0,
    params:
        suites=SUITES,
        code=code_version("evaluate"),
        data_dir=data_dir,
        out_dir="results/{exp}/eval/{method}/seed{seed}",
    shell:
        "python -m atp.stages.evaluate --config {input.config} --method {wildcards.method}"
        " --seed {wildcards.seed} --model {input.model} --data-dir {params.data_dir}"
        " --suites {params.suites} --out-dir {params.out_dir} --threads {threads}"
        " --parent {input.parent} --rule evaluate --wildcards 'method={wildcards.method},seed={wildcards.seed}'"
        " > {log} 2>&1"
