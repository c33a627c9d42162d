# Summary table and HTML report: read the outputs above, compute nothing new about the slides.


localrules:
    summary,
    report,


rule summary:
    input:
        all_summaries(),
    output:
        report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary_csv.rst",
            category="Summary",
        ),
    log:
        f"{RESULTS}/logs/summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/summary/summary.tsv"
    conda:
        "../../envs/mil.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "wsi-mil summary {input:q} -o {output:q} > {log:q} 2>&1"


rule report:
    input:
        summary=f"{RESULTS}/summary.csv",
        tiles=[tiles_path(s) for s in SLIDE_IDS],
        qc=[f"{RESULTS}/qc/{s}.png" for s in SLIDE_IDS],
        features=[features_path(e, s) for e in ENCODERS for s in SLIDE_IDS],
    output:
        html=report(
            f"{RESULTS}/report/index.html",
            caption="../report/index.rst",
            category="Summary",
        ),
        slides=report(
            f"{RESULTS}/report/slides.csv",
            caption="../report/slides_csv.rst",
            category="Slides",
        ),
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/report.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        results=lambda w, input: os.path.dirname(input.summary),
    shell:
        "wsi-mil report {params.results:q} --summary {input.summary:q} -o {output.html:q}"
        " > {log:q} 2>&1"
