"""The top of the build side: the pipeline a recipe runs, packaging into bundles and the report
over many recipes. May import every layer below it."""
