# Summary table and HTML report: read the outputs above, compute nothing new about the slides.
# The report shows this run only: its slides, encoders and benchmark files are listed in run.json
# (written here while parsing) and are the report rule's inputs, never a listing of the folder.


RUN_MANIFEST = {
    "slides": SLIDE_IDS,
    "encoders": ENCODERS,
    "benchmarks": run_benchmarks() + viewer_benchmarks(),
    "heatmaps": [os.path.relpath(d, RESULTS) for d in heatmap_outputs()],
    "viewer": [os.path.relpath(OUT.viewer_dir(t), RESULTS) for t in viewer_tasks()],
}
write_if_changed(
    OUT.run_manifest, json.dumps(RUN_MANIFEST, indent=1, ensure_ascii=False) + "\n"
)


localrules:
    summary,
    report,


rule summary:
    input:
        all_summaries(),
    output:
        report(
            OUT.summary_csv,
            caption="../report/summary_csv.rst",
            category="Summary",
        ),
    log:
        OUT.log("summary"),
    benchmark:
        OUT.benchmark("summary", "summary")
    conda:
        "../../envs/mil.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        reference=REFERENCE,
    shell:
        "wsi-mil summary {input:q} -o {output:q} --reference {params.reference:q} > {log:q} 2>&1"


rule report:
    input:
        summary=OUT.summary_csv,
        tiles=[OUT.tiles(s) for s in SLIDE_IDS],
        qc=[OUT.qc(s) for s in SLIDE_IDS],
        features=[OUT.features(e, s) for e in ENCODERS for s in SLIDE_IDS],
        heatmaps=heatmap_outputs(),
        viewer=viewer_outputs(),
    output:
        html=report(
            OUT.report_html,
            caption="../report/index.rst",
            category="Summary",
        ),
        slides=report(
            OUT.report_slides_csv,
            caption="../report/slides_csv.rst",
            category="Slides",
        ),
    log:
        OUT.log("report"),
    benchmark:
        OUT.benchmark("report", "report")
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        results=lambda w, input: os.path.dirname(input.summary),
        run=OUT.run_manifest,
        # a changed manifest (e.g. a slide added) re-runs the report
        manifest=hashlib.sha256(json.dumps(RUN_MANIFEST).encode()).hexdigest()[:16],
    shell:
        "wsi-mil report {params.results:q} --summary {input.summary:q} --run {params.run:q}"
        " -o {output.html:q} > {log:q} 2>&1"
