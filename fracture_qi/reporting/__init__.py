"""fracture_qi.reporting"""
