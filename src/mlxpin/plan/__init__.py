"""Pure plans: what launch, serve and a distributed launch will run, from project + store."""
