from django.db import models


class Note(models.Model):
    text = models.TextField()
    status = models.CharField(max_length=20, default="new")  # "processed" once the worker has read it
    words = models.IntegerField(null=True)
