# Converted from legacy-spot-managed.yaml by `skyform convert`.
managed_job "legacy-spot-managed" {
  resources {
    accelerators = "T4"
    use_spot     = true
  }

  recovery {
    strategy = "failover"
  }

  # workdir (line 5): skyform's workdir is a local directory: clone the repository first (git clone URL && git checkout REF) and point workdir at it, or clone it in setup.
  #   workdir:
  #     url: https://github.com/example/repo.git
  #     ref: main
  run = "python train.py"
}
