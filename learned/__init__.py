"""carecourse learned transitions (differentially private models); see the learned-transitions issue."""
