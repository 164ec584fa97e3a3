# Converted from plain-managed.yaml by `skyform convert`.
managed_job "sweep" {
  resources {
    cpus = 2
  }

  run = "python sweep.py"
}
