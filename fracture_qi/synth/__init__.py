"""fracture_qi.synth"""
