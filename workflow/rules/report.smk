# The results table: every method x suite, mean +- std over seeds.


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
    shell:
        "python -m atp.stages.table --config {input.config} --metrics {input.metrics}"
        " --out-md {output.md} --out-csv {output.csv} --parent {input.parent} --rule table"
        " > {log} 2>&1"
