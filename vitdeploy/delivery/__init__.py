"""What leaves a build, without PyTorch: edge bundles (`package`) and the report over many
built recipes. An import contract keeps torch out."""
