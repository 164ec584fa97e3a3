# A cluster that exists but is not in state, taken in by an import block (the CLI asks
# the backend; here options.json says what it found), next to a new job.
cluster "dev" {
  num_nodes = 2
}

import {
  to = cluster.dev
  id = "local:.skyform/local/cluster_dev-1a2b3c4d"
}

job "eval" {
  cluster = cluster.dev
  run     = "python eval.py"
}
