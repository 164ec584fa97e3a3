job "x" {
  cluster = cluster.dev
  run     = "true"
}

cluster "dev" {}

import {
  to = job.x
  id = "local:somewhere"
}
