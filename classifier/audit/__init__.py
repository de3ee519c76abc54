"""The data audit's library: label issues by confident learning (confident.py), exact and near
duplicates and train/test leakage (duplicates.py), the dataset profile (profile.py), and the
issues.csv that training takes back (issues_file.py). Nothing here imports the command line layer."""
