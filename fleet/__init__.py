"""Many videos and many cameras on Ray: `fleet.batch` re-processes recorded drives on Ray Data, `fleet.serve`
serves camera frames on Ray Serve, `fleet.loadgen` offers it synthetic cameras. Built on runtime/ (the same
preprocessing, backends, postprocessing and mask files); nothing imports this package.
"""
