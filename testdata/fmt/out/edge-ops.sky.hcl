a = !var.x
b = -var.y * -2
c = var.z[-1]
d = (-1)
e = [-1, -2]
f = { k = -1 }
g = x ? -1 : -2
h = 1 - 1
j = f(x...)
k = a.*.b
l = a[*]
m = "${a}${b}"
n = "%{if a}x%{endif}"
o = a == b
p = a != b
q = a >= b && c <= d
s = 1.5e10 + 2E-3
