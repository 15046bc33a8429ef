"""What the notebooks show: the ipywidgets chat panel, embedding maps and heatmaps, cube tables, demo helpers
and the results a notebook records for its tests."""
