# The results table (every method x suite, mean +- std over seeds), the report's figures and the
# registry entry of the best RL policy. `snakemake --report report.html` gathers them into one page.


rule table:
    input:
        config="results/{exp}/configs/table.yaml",
        metrics=all_suite_metrics,
        parent=rules.tracking.output[0],
    output:
        md=report("results/{exp}/table.md", category="Results"),
        csv="results/{exp}/table.csv",
    log:
        "results/{exp}/logs/table.log",
    benchmark:
        "results/{exp}/benchmarks/table.tsv"
    localrule: True
    conda:
        "../envs/atp.yaml"
    params:
        code=code_version("table"),
    shell:
        "python -m atp.stages.table --config {input.config} --metrics {input.metrics}"
        " --out-md {output.md} --out-csv {output.csv} --parent {input.parent} --rule table"
        " > {log} 2>&1"


rule report_figures:
    input:
        config="results/{exp}/configs/report.yaml",
        table=rules.table.output.csv,
        rl=rl_run_files,
        parent=rules.tracking.output[0],
    output:
        tokens=report(
            "results/{exp}/report/accuracy_vs_tokens.png",
            category="Results",
            caption="../report/accuracy_vs_tokens.rst",
        ),
        curves=report("results/{exp}/report/rl_curves.png", category="RL", caption="../report/rl_curves.rst"),
        registry="results/{exp}/report/registry.json",
        frozen="results/{exp}/report/rl_vs_frozen.md",
    log:
        "results/{exp}/logs/report.log",
    benchmark:
        "results/{exp}/benchmarks/report.tsv"
    localrule: True
    conda:
        "../envs/atp.yaml"
    params:
        runs=rl_runs,
        code=code_version("report"),
        frozen=frozen_runs,
        out_dir=subpath(output.registry, parent=True),
    shell:
        "python -m atp.stages.report --config {input.config} --table {input.table} --rl-runs {params.runs}"
        " --frozen-runs {params.frozen} --out-dir {params.out_dir} --parent {input.parent} --rule report > {log} 2>&1"
