# Converted from recovery.yaml by `skyform convert`.
managed_job "finetune" {
  resources {
    accelerators = "H100:8"
  }

  recovery {
    strategy               = "eager_next_region"
    max_restarts_on_errors = 3
    recover_on_exit_codes  = [33, 34]
  }

  # resources.autostop (line 8): only clusters stop when idle in skyform; a managed job's or service's cluster goes away by itself.
  #   autostop: 10
  setup = "pip install -e ."
  run   = "python finetune.py"
}
