"""fracture_qi.adjudication"""
