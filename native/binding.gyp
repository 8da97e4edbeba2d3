{
  "targets": [
    {
      "target_name": "deq_native",
      "sources": ["deq_native.cc"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-O3", "-fexceptions", "-fopenmp", "-std=gnu++17", "-Wall", "-Wextra"],
      "ldflags": ["-fopenmp"],
      "libraries": ["-ldnnl", "-lgomp"]
    }
  ]
}
