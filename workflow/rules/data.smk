# Job configs, the MLflow parent run, and data preparation.


rule job_config:
    output:
        "results/{exp}/configs/{job}.yaml",
    log:
        "results/{exp}/logs/configs/{job}.log",
    localrule: True
    conda:
        "../envs/atp.yaml"
    params:
        cfg=job_config_json,
    shell:
        "python -m atp.stages.write_config --json {params.cfg:q} --out {output} > {log} 2>&1"


rule tracking:
    input:
        config="results/{exp}/configs/tracking.yaml",
    output:
        "results/{exp}/tracking/parent_run.json",
    log:
        "results/{exp}/logs/tracking.log",
    localrule: True
    conda:
        "../envs/atp.yaml"
    shell:
        "python -m atp.stages.tracking --config {input.config} --out {output} > {log} 2>&1"


rule prepare_data:
    input:
        config="results/{exp}/configs/data.yaml",
        parent=rules.tracking.output[0],
    output:
        train="results/{exp}/data/train.jsonl",
        val="results/{exp}/data/val.jsonl",
        suites=expand("results/{{exp}}/data/{suite}.jsonl", suite=SUITES),
        twins=directory("results/{exp}/data/twins"),
        tokenizer=directory("results/{exp}/data/tokenizer"),
        card=report("results/{exp}/data/card.md", category="Data"),
        card_json="results/{exp}/data/card.json",
    log:
        "results/{exp}/logs/prepare_data.log",
    benchmark:
        "results/{exp}/benchmarks/prepare_data.tsv"
    conda:
        "../envs/atp.yaml"
    threads: 1
    params:
        out_dir=subpath(output.train, parent=True),
        code=code_version("prepare_data"),
    shell:
        "python -m atp.stages.prepare_data --config {input.config} --parent {input.parent}"
        " --out-dir {params.out_dir} --rule prepare_data > {log} 2>&1"
