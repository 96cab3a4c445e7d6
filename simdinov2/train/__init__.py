"""SimDINO / SimDINOv2 training: `SimDINOMetaArch` and the objective selector `build_meta_arch`."""
