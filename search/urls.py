from django.urls import path

from search import apis

urlpatterns = [
    path("search", apis.SearchApi.as_view(), name="api-search"),
    path("search/hybrid/<int:chatbot_id>", apis.SearchHybridApi.as_view(), name="api-search-hybrid"),
    path("search/analytics/<int:chatbot_id>", apis.SearchAnalyticsApi.as_view(), name="api-search-analytics"),
    path("search/logs/<int:chatbot_id>.csv", apis.SearchLogExportApi.as_view(), name="api-search-log-export"),
    path("search/<uuid:query_id>/feedback", apis.SearchFeedbackCreateApi.as_view(), name="api-search-feedback"),
    path("dify/retrieval", apis.DifyRetrievalApi.as_view(), name="api-dify-retrieval"),
    path("optimize/runs/<int:run_id>", apis.OptimizationRunApi.as_view(), name="api-optimize-run"),
    path("optimize/<int:chatbot_id>", apis.OptimizationApi.as_view(), name="api-optimize"),
]
