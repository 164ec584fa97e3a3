locals {
  neg = -1
  sub = 3-1
  sub2 = 3 - -1
  mul = 2*3+4/2%3
  cmp = 1<2&&2>=1||!true
  eq = 1==1 ? "a":"b"
  tern = var.x != null ? var.x : [ for s in var.list : upper(s) if s!="" ]
  splat = cluster.train[*].name
  attr = cluster.train.0.name
  idx = var.list [0]
  obj = {for k,v in var.m: k=>v...}
  call = max( 1 , 2 )
  multi = merge(
    { a = 1 },
      {
  b = 2
      },
  )
  list = [
    "a",
  "b",
        ]
  nested = { outer = { inner = [ 1, { deep = true } ] } }
  inkw = [for x in [1,2]: x]
  tmpl = "%{ if var.x }yes%{ else }no%{ endif }"
  tmpl2 = "%{~ for x in var.list ~}${ x },%{~ endfor ~}"
  paren = ( 1 + 2 ) * 3
  nsfunc = provider::x::y(1)
  empty = {}
  emptyl = []
  esc = "a \"quoted\" $${not} %%{not}"
}
